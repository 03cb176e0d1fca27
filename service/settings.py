"""The one settings object: ``OCELLUS_`` environment variables, then CLI flags."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Service settings. Every one has a default that works.

    Built once at start-up (`ocellus serve` or `create_app`) and passed explicitly.
    """

    model_config = SettingsConfigDict(env_prefix="OCELLUS_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    models: list[Path] = Field(
        default_factory=list,
        description="export directories to serve; empty = the embedded default models")
    default_models: bool = Field(
        True, description="with no --model, serve the default ImageNet classifier and COCO "
        "detector")
    cache_dir: Path = Field(Path.home() / ".cache" / "ocellus",
                            description="where default exports are built and kept")
    device: Literal["cpu", "cuda"] = "cpu"
    torch_threads: int = Field(0, ge=0, description="intra-op threads; 0 = one per core")
    max_upload_bytes: int = Field(20 * 1024 * 1024, gt=0, description="per file")
    max_image_pixels: int = Field(50_000_000, gt=0,
                                  description="width × height; larger is refused (413)")
    max_files: int = Field(16, gt=0, description="image parts per request")
    default_top_k: int = Field(5, gt=0)
    log_level: str = "info"

    @field_validator("models", mode="before")
    @classmethod
    def _split_models(cls, v: object) -> object:
        # OCELLUS_MODELS="a,b" as well as a JSON list.
        if isinstance(v, str) and not v.strip().startswith("["):
            return [p for p in v.split(",") if p.strip()]
        return v

    @property
    def max_request_bytes(self) -> int:
        """Largest request body accepted before reading it: all files plus form overhead."""
        return self.max_upload_bytes * self.max_files + 64 * 1024
