"""What users run over the pipeline: batches of jobs, job files, video, Ray, the doctor."""
