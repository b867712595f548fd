"""What a started service hands its users (components/localstack/services.py starts them): where it
listens, the environment that points a client at it, and its Service (pid, log, stop). The tests'
fixtures, the benchmarks and `vstar services up` hold on to these; only ServiceStack makes them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from components.localstack.processes import Service


@dataclass
class S3:
    endpoint: str
    bucket: str
    service: Service

    def uri(self, prefix: str = "") -> str:
        return f"s3://{self.bucket}/{prefix.lstrip('/')}"

    @property
    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
        }

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")


@dataclass
class MlflowServer:
    uri: str
    service: Service


@dataclass
class PrefectWorker:
    pool: str
    service: Service


@dataclass
class PrefectServer:
    api_url: str
    home: Path
    service: Service


@dataclass
class RayHead:
    address: str  # what ray.init / execution.address take: "127.0.0.1:PORT"
    service: Service


@dataclass
class VllmServer:
    base_url: str  # ends in /v1, what OpenAI clients take
    model: str  # the served model name
    service: Service
