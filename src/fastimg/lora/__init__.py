"""LoRAs applied at run time: their files read without torch, branched graphs, and the
projections each set of LoRAs and scales feeds them."""
