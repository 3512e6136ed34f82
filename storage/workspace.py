"""A workspace: one folder with plmlabel.toml, plmlabel.db, embeddings/, saes/, index/.

The config is a pydantic model read from the TOML file; command-line flags override it per call.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from storage.errors import ConfigError, NotFoundError

CONFIG_NAME = "plmlabel.toml"
DB_NAME = "plmlabel.db"
WORKSPACE_ENV = "PLMLABEL_WORKSPACE"


class _Section(BaseModel):
    # nan and inf are valid TOML floats but never a valid setting (a budget of nan is never reached)
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class PlmConfig(_Section):
    model: str = "esm2_t6_8M_UR50D"
    layer: int = 4
    device: str = "auto"
    dtype: str = "auto"
    max_tokens: int = Field(4096, gt=0)


class IndexConfig(_Section):
    n_top: int = Field(10, ge=1)
    per_bin: int = Field(2, ge=0)
    n_silent: int = Field(10, ge=0)
    n_heldout: int = Field(24, ge=1)  # the test half of the held-out proteins
    n_validation: int = Field(24, ge=0)  # the validation half, for the agent (each half >= label.min_heldout)
    seed: int = 0


class LabelConfig(_Section):
    backend: str | None = None
    model: str | None = None
    base_url: str | None = None
    threshold: float = 0.5
    min_heldout: int = Field(10, ge=2)
    concurrency: int = Field(4, ge=1)
    budget_usd: float | None = None
    max_retries: int = Field(4, ge=0)
    retry_wait_s: float = Field(1.0, gt=0)  # first backoff between retries (grows exponentially, jittered)
    timeout_s: float = Field(120.0, gt=0)


class AgentConfig(_Section):
    """Limits of the agent (`plmlabel label --agent`), per feature."""

    max_tool_calls: int = Field(24, ge=1)
    max_simulations: int = Field(6, ge=1)  # `try_explanation` trials on the validation half
    max_turns: int = Field(16, ge=1)


class Config(_Section):
    plm: PlmConfig = PlmConfig()
    index: IndexConfig = IndexConfig()
    label: LabelConfig = LabelConfig()
    agent: AgentConfig = AgentConfig()


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def config_to_toml(config: Config) -> str:
    """Render a Config as TOML (only the flat sections we have; None values are left out)."""
    lines = ["# plmlabel workspace configuration; command-line flags override these values."]
    for section, model in config:
        lines.append("")
        lines.append(f"[{section}]")
        for key, value in model:
            if value is None:
                lines.append(f"# {key} =")
            else:
                lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def default_workspace_dir() -> Path:
    return Path(os.environ.get(WORKSPACE_ENV) or ".")


class Workspace:
    """Paths and config of one workspace folder. Cheap to construct; opens nothing until asked."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else default_workspace_dir()
        self.root = self.root.expanduser().resolve()

    # --- paths -----------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.root / CONFIG_NAME

    @property
    def db_path(self) -> Path:
        return self.root / DB_NAME

    @property
    def embeddings_dir(self) -> Path:
        return self.root / "embeddings"

    @property
    def saes_dir(self) -> Path:
        return self.root / "saes"

    @property
    def index_dir(self) -> Path:
        return self.root / "index"

    @property
    def lock_path(self) -> Path:
        return self.root / ".plmlabel.lock"

    def sae_dir(self, sae_id: str) -> Path:
        return self.saes_dir / sae_id

    def index_path(self, sae_id: str) -> Path:
        return self.index_dir / sae_id

    # --- lifecycle -------------------------------------------------------------------------------
    @property
    def exists(self) -> bool:
        return self.config_path.exists()

    def init(self, config: Config | None = None) -> bool:
        """Create the folder, the config and the database. Returns False if it already existed."""
        from storage.db import Database

        created = not self.exists
        self.root.mkdir(parents=True, exist_ok=True)
        if created:
            self.config_path.write_text(config_to_toml(config or Config()))
        Database.open(self.db_path, create=True).close()
        return created

    def require(self) -> Workspace:
        if not self.exists:
            raise NotFoundError(
                f"{self.root} is not a plmlabel workspace (no {CONFIG_NAME}); run `plmlabel init` first."
            )
        return self

    def load_config(self) -> Config:
        if not self.config_path.exists():
            return Config()
        try:
            data = tomllib.loads(self.config_path.read_text())
            return Config.model_validate(data)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{self.config_path} is not valid TOML: {exc}.") from exc
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ConfigError(f"{self.config_path}: {where}: {first['msg']}.") from exc

    def save_config(self, config: Config) -> None:
        """Write `config` as the workspace's plmlabel.toml (atomically: a crash leaves the old file)."""
        tmp = self.config_path.with_name(f".{CONFIG_NAME}.tmp-{os.getpid()}")
        tmp.write_text(config_to_toml(config))
        os.replace(tmp, self.config_path)

    def db(self):
        """Open the workspace database (migrating it); a missing, empty or damaged file is refused."""
        from storage.db import Database

        return Database.open(self.db_path)
