"""`rnnserve serve`: settings from a config file, environment variables and flags, then run.

Precedence, highest first: command-line flags, RNNSERVE_* environment variables (nested fields
with "__", e.g. RNNSERVE_SESSIONS__IDLE_TTL_S), the config file (--config or RNNSERVE_CONFIG_FILE;
TOML or JSON, same field names as the settings, nested tables for nested groups), defaults.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from pydantic_settings import (
    BaseSettings,
    JsonConfigSettingsSource,
    PydanticBaseSettingsSource,
    TomlConfigSettingsSource,
)

from rnnserve_server.config import ServerSettings

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="rnnserve: stateful streaming RNN inference over gRPC",
)

# Set to a file path to have the server write the modules it had imported when it exits (tests
# use it to prove that torch, onnx and the training package never load).
MODULES_FILE_ENV = "RNNSERVE_DEBUG_MODULES_FILE"


def load_settings(config_file: Path | None = None, **overrides: Any) -> ServerSettings:
    """Build the settings: `overrides` (flags; nested groups as dicts) > env > file > defaults."""
    path = config_file or (
        Path(os.environ["RNNSERVE_CONFIG_FILE"]) if os.environ.get("RNNSERVE_CONFIG_FILE") else None
    )
    if path is not None and not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")

    class _FromFile(ServerSettings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            if path is None:
                return (init_settings, env_settings)
            file_source: PydanticBaseSettingsSource
            if path.suffix.lower() == ".toml":
                file_source = TomlConfigSettingsSource(settings_cls, toml_file=path)
            elif path.suffix.lower() == ".json":
                file_source = JsonConfigSettingsSource(settings_cls, json_file=path)
            else:
                raise ValueError(f"config file {path}: use a .toml or .json file")
            return (init_settings, env_settings, file_source)

    loaded = _FromFile(**{k: v for k, v in overrides.items() if v is not None})
    # A plain ServerSettings (no dynamic subclass leaking out), without re-reading the sources.
    return ServerSettings.model_construct(**dict(loaded))


def _nested(**values: Any) -> dict[str, Any] | None:
    given = {k: v for k, v in values.items() if v is not None}
    return given or None


@app.command()
def serve(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="TOML or JSON settings file.")
    ] = None,
    model_repository: Annotated[
        Path | None, typer.Option(help="Root of the model repository.")
    ] = None,
    model: Annotated[
        list[str] | None, typer.Option("--model", "-m", help="Load only this model (repeatable).")
    ] = None,
    host: Annotated[str | None, typer.Option(help="Address to bind.")] = None,
    port: Annotated[int | None, typer.Option(help="gRPC port (0 = any free port).")] = None,
    metrics_port: Annotated[
        int | None, typer.Option(help="Prometheus /metrics port (0 = any free port).")
    ] = None,
    providers: Annotated[
        str | None, typer.Option(help="Execution providers in order, e.g. 'cuda,cpu' or 'cpu'.")
    ] = None,
    max_batch_size: Annotated[int | None, typer.Option(help="Most sessions per run.")] = None,
    max_queue_delay_ms: Annotated[
        float | None, typer.Option(help="How long a non-full batch may wait.")
    ] = None,
    max_sessions: Annotated[
        int | None, typer.Option(help="Session capacity of each model.")
    ] = None,
    eviction: Annotated[str | None, typer.Option(help="When full: 'reject' or 'lru'.")] = None,
    idle_ttl_s: Annotated[
        float | None, typer.Option(help="Evict sessions idle this long (0 = never).")
    ] = None,
    sweep_interval_s: Annotated[
        float | None, typer.Option(help="How often the idle sweeper runs.")
    ] = None,
    max_message_bytes: Annotated[
        int | None, typer.Option(help="Largest gRPC message accepted or sent.")
    ] = None,
    shutdown_grace_s: Annotated[
        float | None, typer.Option(help="Time to drain in-flight work on SIGTERM.")
    ] = None,
    event_loop: Annotated[
        str | None, typer.Option(help="'auto' (uvloop when installed), 'uvloop' or 'asyncio'.")
    ] = None,
    log_level: Annotated[str | None, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = None,
    log_format: Annotated[str | None, typer.Option(help="'json' or 'text'.")] = None,
) -> None:
    """Serve the model repository over gRPC until SIGTERM/SIGINT."""
    try:
        settings = load_settings(
            config,
            model_repository=model_repository,
            models=model or None,
            host=host,
            port=port,
            metrics_port=metrics_port,
            shutdown_grace_s=shutdown_grace_s,
            event_loop=event_loop,
            log_level=log_level,
            log_format=log_format,
            runtime=_nested(providers=providers.split(",") if providers else None),
            batcher=_nested(max_batch_size=max_batch_size, max_queue_delay_ms=max_queue_delay_ms),
            sessions=_nested(
                max_sessions_per_model=max_sessions,
                eviction=eviction,
                idle_ttl_s=idle_ttl_s,
                sweep_interval_s=sweep_interval_s,
            ),
            limits=_nested(max_message_bytes=max_message_bytes),
        )
    except (ValidationError, ValueError, FileNotFoundError) as exc:
        typer.echo(f"rnnserve: invalid settings: {exc}", err=True)
        raise typer.Exit(2) from exc
    run(settings)


def run(settings: ServerSettings) -> None:
    # Imported here so `rnnserve --help` stays fast and settings errors need no runtime.
    from rnnserve_server.app import Ports, StartupError, serve
    from rnnserve_server.event_loop import resolve, run_on_event_loop
    from rnnserve_server.logging_setup import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    try:
        loop_name = resolve(settings.event_loop)
    except RuntimeError as exc:
        typer.echo(f"rnnserve: invalid settings: {exc}", err=True)
        raise typer.Exit(2) from exc

    def ready(ports: Ports) -> None:
        # One stable line on stdout, for people and for scripts that start us on port 0.
        print(
            f"rnnserve listening grpc={settings.host}:{ports.grpc} "
            f"metrics=http://{settings.host}:{ports.metrics}/metrics",
            flush=True,
        )

    try:
        run_on_event_loop(serve(settings, ready), loop_name)
    except StartupError as exc:
        logging.getLogger("rnnserve").error("cannot start: %s", exc)
        typer.echo(f"rnnserve: cannot start: {exc}", err=True)
        raise typer.Exit(1) from exc
    finally:
        modules_file = os.environ.get(MODULES_FILE_ENV)
        if modules_file:
            Path(modules_file).write_text(json.dumps(sorted(sys.modules)))


@app.command()
def config_schema() -> None:
    """Print the settings' JSON schema (every field with its description and default)."""
    typer.echo(json.dumps(ServerSettings.model_json_schema(), indent=2))


def main() -> None:
    app()
