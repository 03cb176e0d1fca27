"""The one settings object: ``OCELLUS_`` environment variables, then CLI flags."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """Service settings. Every one has a default that works.

    Built once at start-up (`ocellus serve` or `create_app`) and passed explicitly.
    """

    model_config = SettingsConfigDict(env_prefix="OCELLUS_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    # NoDecode: pydantic-settings would parse a list's variable as JSON only, refusing
    # OCELLUS_MODELS=/srv/export before `_split_list` could see it.
    models: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="export directories to serve; empty = the embedded default models")
    default_models: bool = Field(
        True, description="with no --model, serve the default ImageNet classifier and COCO "
        "detector")
    cache_dir: Path = Field(Path.home() / ".cache" / "ocellus",
                            description="where default exports are built and kept, and "
                            "compiled graphs (compiled/, service/compile_cache.py)")
    device: Literal["cpu", "cuda"] = "cpu"
    # Threads (2-core box): the forward gets every core as intra-op threads, since it is
    # ~85% of the CPU per image; decoding gets half the cores (1 here), enough to keep a
    # batch ready while the forward runs without preempting its OpenMP threads.
    torch_threads: int = Field(0, ge=0, description="intra-op threads; 0 = one per core")
    decode_threads: int = Field(0, ge=0, description="decode + preprocess thread pool; "
                                "0 = half the cores, at least 1")
    # Serving under load (service/batcher.py).
    backend: Literal["auto", "eager", "compiled", "bf16", "int8"] = Field(
        "auto", description="inference backend; auto = an int8 export's int8 model, else the "
        "fastest whose top-1 agrees with fp32 on real images >= 99.5% (service/backends.py)")
    max_batch_size: int = Field(8, gt=0, description="images per forward pass, at most")
    tune_batch_size: bool = Field(
        True, description="at warm-up, measure img/s per batch size and batch at the largest "
        "size within 10% of the fastest per image (service/batch_tuning.py)")
    max_delay_ms: float = Field(5.0, ge=0, description="longest wait for a batch to fill, "
                                "only while more images are being decoded")
    max_queue: int = Field(256, gt=0, description="images waiting for a forward; more get "
                           "503 with Retry-After")
    request_timeout_s: float = Field(30.0, gt=0, description="longest time from a request's "
                                     "upload read to its results (decode + queue + forward); "
                                     "then 503 with Retry-After")
    max_in_flight: int = Field(64, gt=0, description="inference requests handled at once by "
                               "this process (upload to answer); more get 503 with "
                               "Retry-After before their body is read")
    max_upload_bytes: int = Field(20 * 1024 * 1024, gt=0, description="per file")
    max_image_pixels: int = Field(50_000_000, gt=0,
                                  description="width × height; larger is refused (413)")
    max_files: int = Field(16, gt=0, description="image parts per request")
    render_max_side: int = Field(
        4096, gt=0, le=65_500, description="longer side of the annotated image that "
        "/v1/detect returns with render=true or Accept: image/png|jpeg; larger images are "
        "drawn scaled down (JPEG's limit is 65,500)")
    default_top_k: int = Field(5, gt=0)
    log_level: str = "info"
    log_format: Literal["auto", "text", "json"] = Field(
        "auto", description="text, or JSON lines (service/logs.py); auto: text on a "
        "terminal, JSON elsewhere")
    # Operations (docs/operations.md): registry, hot reload, admin API, API keys.
    registry: Path | None = Field(
        None, description="model registry folder: serve every name's current version")
    registry_poll_seconds: float = Field(
        5.0, ge=0, description="how often to look for a new `current`; 0 = only on "
        "POST /v1/models/{name}/reload")
    reload_drain_seconds: float = Field(
        60.0, ge=0, description="a replaced version is closed when the last request that "
        "holds it has answered, or after this long at most; keep it above the request timeout")
    admin_token: SecretStr | None = Field(
        None, description="bearer token of the admin API; unset = the admin API is off")
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="if set, /v1/ routes need one of these as "
        "`Authorization: Bearer KEY` or `X-API-Key: KEY`")

    @field_validator("api_keys", "models", mode="before")
    @classmethod
    def _split_list(cls, v: object) -> object:
        # OCELLUS_API_KEYS="k1,k2" and OCELLUS_MODELS="a,b" as well as a JSON list.
        if isinstance(v, str):
            text = v.strip()
            return json.loads(text) if text.startswith("[") else [
                k.strip() for k in text.split(",") if k.strip()]
        return v

    @field_validator("admin_token", mode="before")
    @classmethod
    def _blank_token_is_unset(cls, v: object) -> object:
        # Compose and shells easily turn an unset variable into "": that means "off",
        # never a token that an empty credential could match.
        text = v.get_secret_value() if isinstance(v, SecretStr) else v
        return None if isinstance(text, str) and not text.strip() else v

    @property
    def max_request_bytes(self) -> int:
        """Largest request body accepted before reading it: all files plus form overhead."""
        return self.max_upload_bytes * self.max_files + 64 * 1024
