"""S3-compatible object storage through boto3: one bucket and key prefix, files up and down with progress.

Credentials, region and endpoint come from boto3's usual sources (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or
AWS_PROFILE, a web identity in a pod, AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL for MinIO, Ceph, GCS's XML API...).
Every failure the user can fix leaves here as a one-line QuantizeError.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import boto3
from boto3.exceptions import S3TransferFailedError, S3UploadFailedError
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, PartialCredentialsError
from tqdm import tqdm

from quantize.errors import QuantizeError

BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
MISSING_CODES = {"404", "NoSuchKey", "NotFound"}
URI_HELP = "expected s3://BUCKET or s3://BUCKET/PREFIX"


@dataclass(frozen=True)
class ObjectLocation:
    """`s3://bucket/prefix`: where a models folder lives in a bucket."""

    bucket: str
    prefix: str

    @classmethod
    def parse(cls, uri: str) -> ObjectLocation:
        parsed = urlparse(uri)
        if parsed.scheme != "s3":
            raise QuantizeError(f"{uri!r} is not an s3:// URI; {URI_HELP}")
        if not BUCKET_NAME.match(parsed.netloc):
            raise QuantizeError(f"{uri!r} has no valid bucket name; {URI_HELP}")
        if parsed.query or parsed.fragment:
            raise QuantizeError(f"{uri!r} has a query or fragment; {URI_HELP}")
        return cls(bucket=parsed.netloc, prefix=parsed.path.strip("/"))

    def key(self, *parts: str) -> str:
        return "/".join(part.strip("/") for part in (self.prefix, *parts) if part)

    def uri(self, *parts: str) -> str:
        return f"s3://{self.bucket}/{self.key(*parts)}"


class ObjectStore:
    """One bucket and prefix. Methods raise QuantizeError for what the user can fix."""

    def __init__(self, location: ObjectLocation, client=None) -> None:
        self.location = location
        self.client = client or boto3.client("s3")

    def read_text(self, *parts: str) -> str | None:
        """A small object's text, or None when there is no such key."""
        try:
            with self.errors(self.location.uri(*parts)):
                body = self.client.get_object(Bucket=self.location.bucket, Key=self.location.key(*parts))["Body"]
                return body.read().decode()
        except _MissingKey:
            return None

    def write_text(self, text: str, *parts: str) -> None:
        with self.errors(self.location.uri(*parts)):
            self.client.put_object(Bucket=self.location.bucket, Key=self.location.key(*parts), Body=text.encode())

    def upload(self, path: Path, progress: tqdm, *parts: str) -> None:
        with self.errors(self.location.uri(*parts)):
            self.client.upload_file(str(path), self.location.bucket, self.location.key(*parts),
                                    Callback=progress.update)

    def download(self, path: Path, progress: tqdm, *parts: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self.errors(self.location.uri(*parts)):
                self.client.download_file(self.location.bucket, self.location.key(*parts), str(path),
                                          Callback=progress.update)
        except _MissingKey:
            raise QuantizeError(f"{self.location.uri(*parts)}: no such object (listed in the manifest); "
                                "push the variant again") from None

    @contextlib.contextmanager
    def errors(self, uri: str) -> Iterator[None]:
        """botocore's exceptions as one line naming the URI (a missing key as _MissingKey, for the caller)."""
        try:
            yield
        except (NoCredentialsError, PartialCredentialsError):
            raise QuantizeError(f"{uri}: no S3 credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                                "(or AWS_PROFILE), and AWS_ENDPOINT_URL for an S3-compatible server") from None
        except ClientError as exc:
            raise _client_error(exc, uri, self.location.bucket) from None
        except (S3UploadFailedError, S3TransferFailedError) as exc:
            cause = exc.__context__
            if isinstance(cause, ClientError):
                raise _client_error(cause, uri, self.location.bucket) from None
            raise QuantizeError(f"{uri}: transfer failed: {_one_line(exc)}") from None
        except BotoCoreError as exc:
            raise QuantizeError(f"{uri}: {_one_line(exc)}") from None


class _MissingKey(QuantizeError):
    """No object under that key; callers that expect it may be absent catch this."""


def _client_error(exc: ClientError, uri: str, bucket: str) -> QuantizeError:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    if code == "NoSuchBucket":
        return QuantizeError(f"{uri}: bucket {bucket!r} does not exist (or the endpoint is not the one that has it)")
    if code in MISSING_CODES:
        return _MissingKey(f"{uri}: no such object")
    if code in {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden"}:
        return QuantizeError(f"{uri}: access denied ({code}); check the credentials and the bucket's policy")
    return QuantizeError(f"{uri}: {code or 'error'}: {_one_line(error.get('Message') or exc)}")


def _one_line(value: object) -> str:
    return " ".join(str(value).split())


def transfer_progress(label: str, total_bytes: int) -> tqdm:
    """A byte counter on stderr for a terminal; silent in logs and pipes (tqdm's disable=None)."""
    return tqdm(total=total_bytes, desc=label, unit="B", unit_scale=True, unit_divisor=1024, disable=None,
                leave=False)
