"""Server settings: one pydantic-settings object, built once in main() and passed down.

Precedence (highest first): CLI flags, environment variables (RNNSERVE_<FIELD>, nested with
"__"), a TOML/YAML-free JSON or TOML config file (--config / RNNSERVE_CONFIG_FILE), defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class RuntimeSettings(BaseModel):
    """ONNX Runtime execution."""

    providers: list[Literal["cuda", "cpu"]] = Field(
        default=["cuda", "cpu"],
        description="Execution providers in order of preference; CUDA falls back to CPU with one "
        "log line when it is not usable.",
    )
    cuda_device_id: int = Field(0, description="GPU used by the CUDA execution provider.")
    intra_op_threads: int = Field(
        1,
        ge=0,
        description="ONNX Runtime intra-op threads per run (0 = one per core). 1 by default: "
        "the event loop and gRPC need the other cores, and `run_workers` runs batches in "
        "parallel; on a 2-core machine ORT's default made a batch-256 GRU run 7x slower.",
    )
    inter_op_threads: int = Field(0, description="ONNX Runtime inter-op threads (0 = ORT default).")
    allow_spinning: bool = Field(
        False,
        description="Let ONNX Runtime's idle intra-op threads spin waiting for work. Off by "
        "default: spinning threads take the cores the event loop and gRPC need between runs.",
    )
    graph_optimization: Literal["disable", "basic", "extended", "all"] = Field(
        "all", description="ONNX Runtime graph optimisation level."
    )
    run_workers: int = Field(
        2, description="Threads that run ONNX Runtime (its run() releases the GIL)."
    )
    step_graph: bool | Literal["auto"] = Field(
        "auto",
        description="On CPU, run one-step batches (T=1) of models with ONNX RNN, GRU or LSTM nodes "
        "through a copy of the graph with each of them written out as its cell equations, used "
        "only after it gave the original's outputs at load. 'auto': only where it is also faster, "
        "timed at load from step_graph_min_batch to 256 sessions, from the smallest batch on "
        "which it stays faster (on the 2-core VM: GRUs yes, -24% ORT time per session-step at "
        "batch 59 and 256 for the hidden-128 benchmark GRU, from 64 sessions for the small "
        "shipped GRUs; Elman RNNs yes, ORT's RNN kernel is 3-4x slower from 32 sessions; LSTMs "
        "mostly no, ORT's LSTM kernel is as fast); true: from "
        "step_graph_min_batch wherever it is exact; false: never.",
    )
    step_graph_min_batch: int = Field(
        32,
        ge=1,
        description="Smallest batch (sessions) that uses the step graph: below it the copy's "
        "extra nodes cost more than the GRU kernel loses (slower up to about 16 sessions).",
    )
    worker_nice: Annotated[int, Field(ge=0, le=19)] | Literal["auto"] = Field(
        "auto",
        description="Niceness of the ONNX Runtime worker threads (Linux; 0 = as the rest of the "
        "server). Above 0 the event loop and gRPC's threads preempt a run, so compute fills the "
        "time that reads and replies leave instead of delaying them. 'auto': 19 when the server "
        "may use fewer than run_workers + 2 cores (as batcher.parallel_light_batches), else 0. "
        "On 2 cores, 19 gave ping-pong p99 -6% (256 sessions) and -10% (64), steps/s +17% at "
        "1024 sessions and frames +10%.",
    )


class BatcherSettings(BaseModel):
    """Per-model coalescing of steps from many sessions into one run."""

    max_batch_size: int = Field(256, ge=1, description="Most sessions in one ONNX Runtime run.")
    max_queue_delay_ms: float = Field(
        0.0,
        ge=0,
        description="How long a non-full batch may wait for more work. 0 = run as soon as the "
        "previous run finished (batches still form while a run is in flight).",
    )
    parallel_light_batches: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Whether a partial batch of light messages (under 8 session-steps each, e.g. "
        "one-step ping-pong) may run beside a run already in flight. 'off': it waits and joins "
        "a bigger batch; on 2 cores that parallel run takes a core from the event loop "
        "and the run beside it slows both (256-session ping-pong p99 -10%, 16-64 sessions "
        "-4-12%). Full batches and heavy work (frames, long chunks) use every worker either "
        "way. 'auto': 'on' when "
        "the server may use at least run_workers + 2 cores (its affinity mask, capped by a "
        "container's cgroup CPU quota).",
    )
    inline_max_steps: int = Field(
        4,
        ge=0,
        description="A batch of at most this many session-steps, with no other run in flight and "
        "nothing else queued, runs on the event loop instead of a worker thread: at low load "
        "the two thread hand-offs cost more than the run (single-session p50 0.54 -> 0.46 ms). A "
        "model whose tiny runs keep taking over 1 ms goes back to the workers. "
        "0 = always use the workers.",
    )


class SessionSettings(BaseModel):
    """Per-session state store."""

    max_sessions_per_model: int = Field(100_000, ge=1, description="Capacity of each model.")
    eviction: Literal["reject", "lru"] = Field(
        "reject",
        description="When a model is full: reject new sessions with RESOURCE_EXHAUSTED, or evict "
        "the least recently used session.",
    )
    idle_ttl_s: float = Field(
        3600.0, ge=0, description="Sessions idle longer than this are evicted (0 = never)."
    )
    sweep_interval_s: float = Field(
        5.0,
        gt=0,
        description="How often the sweeper runs (idle TTL eviction, shrinking "
        "session arenas a burst left mostly empty).",
    )


class LimitSettings(BaseModel):
    """Request validation limits."""

    max_chunk_steps: int = Field(4096, ge=1, description="Most steps in one chunk.")
    max_predict_steps: int = Field(100_000, ge=1, description="Most steps in one Predict call.")
    max_forecast_horizon: int = Field(10_000, ge=1, description="Largest Forecast horizon.")
    max_frame_sessions: int = Field(4096, ge=1, description="Most sessions in one frame.")
    max_message_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="Largest gRPC message accepted or sent."
    )
    allow_non_finite: bool = Field(
        False,
        description=(
            "Accept NaN/Inf inputs instead of rejecting them; when false, a chunk whose outputs "
            "or new state come out NaN/Inf is refused too and not applied."
        ),
    )


class ServerSettings(BaseSettings):
    """Everything the server needs; see the README's configuration table."""

    model_config = SettingsConfigDict(
        env_prefix="RNNSERVE_", env_nested_delimiter="__", extra="forbid"
    )

    model_repository: Path = Field(
        Path("model_repository"), description="Root of the Triton-style model repository."
    )
    models: list[str] = Field(
        default_factory=list, description="Models to load (empty = every model in the repository)."
    )
    host: str = Field("0.0.0.0", description="Address the gRPC server binds.")
    port: int = Field(8001, ge=0, le=65535, description="gRPC port (0 = pick a free port).")
    metrics_port: int = Field(
        8002, ge=0, le=65535, description="Prometheus /metrics HTTP port (0 = pick a free port)."
    )
    grpc_workers: int = Field(
        16, ge=1, description="Threads for unary handlers that block (admin calls)."
    )
    shutdown_grace_s: float = Field(
        10.0, ge=0, description="On SIGTERM: time to finish in-flight work before exiting."
    )
    event_loop: Literal["auto", "asyncio", "uvloop"] = Field(
        "auto",
        description="Event loop: uvloop (C; about a fifth less event-loop CPU per streamed step, "
        "docs/benchmarks.md) or the standard asyncio loop; auto = uvloop when installed (the "
        "server extra installs it on Linux and macOS).",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = Field(
        "json", description="Structured logs as JSON lines."
    )
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    batcher: BatcherSettings = Field(default_factory=BatcherSettings)
    sessions: SessionSettings = Field(default_factory=SessionSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
