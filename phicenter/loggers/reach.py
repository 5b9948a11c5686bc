"""Whether the loggers a run picked can keep its records, checked before any work (phicenter.config.check_launch,
beside check_installed): W&B online needs a login, a remote MLflow store a server that answers. No network
beyond one short connect to the MLflow server named, and no logger library imported: W&B's login is looked up
where wandb itself looks (WANDB_API_KEY or WANDB_IDENTITY_TOKEN_FILE, else the netrc entry of its host)."""

from __future__ import annotations

import netrc
import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

from phicenter.loggers.base import env_or
from phicenter.loggers.mlflow_run import tracking_uri
from phicenter.spec import ConfigError

CONNECT_TIMEOUT_S = 2.5
WANDB_HOST = "https://api.wandb.ai"
ONLINE = ("online", "run")  # wandb's modes that upload ("run" is its old name for online)


def _netrc_path() -> Path:
    """The netrc file wandb reads: $NETRC, else ~/.netrc, else ~/_netrc."""
    if os.environ.get("NETRC"):
        return Path(os.environ["NETRC"]).expanduser()
    unix = Path("~/.netrc").expanduser()
    windows = Path("~/_netrc").expanduser()
    return windows if not unix.exists() and windows.exists() else unix


def wandb_logged_in() -> bool:
    """Whether wandb finds credentials for its host without asking: an API key or identity token file in the
    environment, or a netrc entry with a key for the host ($WANDB_BASE_URL, else W&B's cloud)."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlsplit(os.environ.get("WANDB_BASE_URL") or WANDB_HOST).netloc
    try:
        creds = netrc.netrc(_netrc_path()).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(creds and creds[2])


def check_wandb(options) -> None:
    mode = str(env_or(options.mode, "WANDB_MODE") or "online").lower()
    disabled = os.environ.get("WANDB_DISABLED", "").lower() in ("true", "1")
    if mode in ONLINE and not disabled and not wandb_logged_in():
        raise ConfigError(
            "logger=wandb is online but no W&B login is found (no WANDB_API_KEY, no netrc entry for "
            f"{urlsplit(os.environ.get('WANDB_BASE_URL') or WANDB_HOST).netloc}); run `wandb login` first, or "
            "keep the runs on disk with logger.wandb.mode=offline (`wandb sync` uploads them later)"
        )


def answers(host: str, port: int, timeout: float = CONNECT_TIMEOUT_S) -> str | None:
    """None when a TCP connection to host:port opens within timeout, else why not."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as e:
        return e.strerror or type(e).__name__


def check_mlflow(options) -> None:
    uri = tracking_uri(options.tracking_uri) or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri or not uri.startswith(("http://", "https://")):
        return
    parts = urlsplit(uri)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ConfigError(f"logger.mlflow.tracking_uri={uri} has no valid port") from None
    why = answers(parts.hostname or "", port)
    if why is not None:
        local = (Path.cwd() / "outputs" / "mlruns").as_uri()
        raise ConfigError(
            f"logger=mlflow: no MLflow server answers at {uri} ({why}); start it, or keep the runs in a local "
            f"store: logger.mlflow.tracking_uri={local}"
        )


def check_reachable(loggers: dict) -> None:
    """ConfigError, in one line naming the local alternative, for a logger picked that cannot keep records:
    {name: its typed options}, as phicenter.loggers.selected gives them."""
    if loggers.get("wandb") is not None:
        check_wandb(loggers["wandb"])
    if loggers.get("mlflow") is not None:
        check_mlflow(loggers["mlflow"])
