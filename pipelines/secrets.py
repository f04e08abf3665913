"""Keeping credentials out of everything the pipeline writes: saved configs, MLflow params and tags, logs.

Credentials reach the pipeline through the environment or the cloud's identity (AWS_* variables, an
instance profile, IRSA, MLFLOW_TRACKING_PASSWORD ...), never through configs; this is the second line of
defence for a secret that was put in a config or a URI anyway.
"""

from __future__ import annotations

import os
import re
from typing import Any

REDACTED = "***"
# Key names whose values are secrets (matched as whole words of the key: `api_key`, `aws_secret_access_key`,
# `mlflow_tracking_token`; not `keep_checkpoints` or `tokenizer`).
_SECRET_KEY = re.compile(r"(^|_)(secret|password|passwd|token|credentials?|api_key|access_key|session_key)(_|$)",
                         re.IGNORECASE)
# user:password@ (or a bare token@) in a URI: https://user:pass@host, s3://KEY:SECRET@bucket.
_URI_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/@\s]+)@")
# Secrets passed as query parameters of a URI (presigned URLs, SAS tokens).
_URI_QUERY_SECRET = re.compile(r"(?P<name>[?&](?:[^=&\s]*(?:signature|token|secret|password|sig|key)[^=&\s]*))=[^&\s]+",
                               re.IGNORECASE)


def is_secret_key(key: str) -> bool:
    return bool(_SECRET_KEY.search(key))


def redact_text(text: str) -> str:
    """`text` with credentials inside URIs replaced: s3://KEY:SECRET@bucket/x -> s3://***@bucket/x."""
    text = _URI_USERINFO.sub(lambda m: f"{m['scheme']}{REDACTED}@", text)
    return _URI_QUERY_SECRET.sub(lambda m: f"{m['name']}={REDACTED}", text)


def redact(value: Any) -> Any:
    """A copy of `value` (nested dicts, lists, strings) that is safe to save or log."""
    if isinstance(value, dict):
        return {key: (REDACTED if is_secret_key(str(key)) and item not in (None, "") else redact(item))
                for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(item) for item in value]
    if isinstance(value, str):
        return redact_text(value)
    return value


def keep_credentials_out_of_mlflow_output(tracking_uri: str) -> None:
    """MLflow prints "View run at <tracking URI>/..." when a run ends; with user:password@ in the URI that
    would put the password in the job's log, so for such a URI that printing is turned off (this process)."""
    if redact_text(tracking_uri) != tracking_uri:
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
