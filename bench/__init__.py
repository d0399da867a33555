"""fastimg's measurements against baseline diffusers (installed as fastimg_bench)."""
