"""Fetch the Ray auth token (RAY_AUTH_MODE=token) from AWS SSM Parameter Store into Ray's token file. [ours]

Run by ray_cluster.yaml's setup_commands on every node, through the node's IAM instance profile (no keys):

    python infra/fetch_ray_token.py --parameter /genscan/ray-auth-token --region us-east-1

Writes the token to `~/.ray/auth_token` (Ray's default token path; `--out` to change) atomically with mode 0600.
The token value is never logged or printed. Exit code 0 on success, 2 when the parameter is missing or empty.
Create the parameter once:  `aws ssm put-parameter --type SecureString --name /genscan/ray-auth-token
--value "$(openssl rand -hex 32)"`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from pipeline.logs import get_logger

log = get_logger("infra.fetch_ray_token")

DEFAULT_TOKEN_PATH = Path.home() / ".ray" / "auth_token"


def fetch_token(parameter: str, region: str | None = None) -> str:
    """The decrypted value of SSM parameter `parameter` (stripped). Raises LookupError if missing or empty."""
    import boto3
    from botocore.exceptions import ClientError

    client = boto3.client("ssm", region_name=region)
    try:
        resp = client.get_parameter(Name=parameter, WithDecryption=True)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code == "ParameterNotFound":
            raise LookupError(f"SSM parameter {parameter!r} not found") from exc
        raise
    token = str(resp["Parameter"]["Value"]).strip()
    if not token:
        raise LookupError(f"SSM parameter {parameter!r} is empty")
    return token


def write_token(token: str, path: Path) -> None:
    """Atomically write `token` to `path` with mode 0600 (the directory is created 0700 if missing)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".auth_token.", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parameter", default="/genscan/ray-auth-token", help="SSM SecureString parameter name")
    ap.add_argument("--region", default=None, help="AWS region (default: the standard AWS chain)")
    ap.add_argument("--out", type=Path, default=DEFAULT_TOKEN_PATH, help="token file (default ~/.ray/auth_token)")
    args = ap.parse_args(argv)
    try:
        token = fetch_token(args.parameter, args.region)
    except LookupError as exc:
        log.error("ray_token_missing", parameter=args.parameter, error=str(exc))
        return 2
    write_token(token, args.out)
    log.info("ray_token_written", parameter=args.parameter, path=str(args.out), n_chars=len(token))
    return 0


if __name__ == "__main__":
    sys.exit(main())
