"""The local services (S3, MLflow, Prefect server and worker, Ray, `vllm serve`) that the tests and
benchmarks start, and `vstar services up|status|down` starts detached. No stage imports this: a stage
reaches its services through the environment they set."""
