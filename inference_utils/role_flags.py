"""The command-line flags that choose the role models, shared by the commands that run the
roles (``infer_pipeline`` and ``run_agent``): local checkpoints (``--<role>_model_name_or_path``),
LoRA adapters on one base (``--<role>_use_lora``), or OpenAI-compatible endpoints
(``--<role>_endpoint``), with their prompt types and generation settings."""

from __future__ import annotations

import argparse

from inference_utils.backends import RoleBackend
from inference_utils.endpoints import APIS, Endpoint, EndpointBackend, EndpointClient
from inference_utils.generation import GenerationSettings, HFModels, LoRAModels
from process_data.protocol import MULTI_ROLES as ROLES


def build_endpoints(
    args: argparse.Namespace, prog: str = "infer_pipeline"
) -> EndpointBackend | None:
    """The role endpoints, when the roles are served (all of them, or the backbone)."""
    roles = ("backbone",) if args.backbone_endpoint else ROLES
    urls = {r: getattr(args, f"{r}_endpoint") for r in roles}
    if not any(urls.values()):
        return None
    missing = [r for r in roles if not urls[r]]
    if missing:
        raise SystemExit(f"{prog}: give --{missing[0]}_endpoint too (or no endpoint)")
    clients = {}
    for role, url in urls.items():
        endpoint = Endpoint(
            url,
            getattr(args, f"{role}_endpoint_model"),
            args.endpoint_api,
            api_key_env=getattr(args, f"{role}_endpoint_api_key_env"),
        )
        try:
            clients[role] = EndpointClient(
                endpoint,
                max_new_tokens=args.max_new_tokens,
                temperature=sampling_temperature(args),
                seed=args.seed if sampling_temperature(args) else None,
                timeout=args.request_timeout,
                max_retries=args.max_retries,
                max_connections=args.endpoint_concurrency,
            )
        except ValueError as exc:
            raise SystemExit(f"{prog}: --{role}_endpoint_api_key_env: {exc}") from None
    return EndpointBackend(clients, args.endpoint_concurrency)


def build_models(
    args: argparse.Namespace, settings: GenerationSettings, prog: str = "infer_pipeline"
) -> RoleBackend:
    """The local role models of the flags: checkpoints, LoRA adapters, or the backbone."""
    if args.backbone_model_name_or_path:
        return HFModels({"backbone": args.backbone_model_name_or_path}, settings)
    paths = {r: getattr(args, f"{r}_model_name_or_path") for r in ROLES}
    missing = [r for r in ROLES if not paths[r]]
    if missing:
        raise SystemExit(
            f"{prog}: give --{missing[0]}_model_name_or_path (or "
            "--backbone_model_name_or_path for the single-LLM mode)"
        )
    lora = [getattr(args, f"{r}_use_lora") for r in ROLES]
    if all(lora):
        return LoRAModels(paths, settings)
    if any(lora):
        raise SystemExit(f"{prog}: use LoRA adapters for all three roles or for none")
    return HFModels(paths, settings)


def add_role_arguments(p: argparse.ArgumentParser) -> None:
    """The flags that choose and configure the role backends (local checkpoints, LoRA
    adapters or endpoints), their prompt types and generation; shared by the commands that
    run the roles."""
    for role in ROLES:
        p.add_argument(f"--{role}_model_name_or_path")
        p.add_argument(f"--{role}_use_lora", type=_bool, default=False)
    p.add_argument("--backbone_model_name_or_path")
    for role in (*ROLES, "backbone"):
        p.add_argument(f"--{role}_endpoint", help=f"OpenAI-compatible API base of the {role}")
        p.add_argument(f"--{role}_endpoint_model", help="default: the first model it lists")
        p.add_argument(
            f"--{role}_endpoint_api_key_env",
            metavar="VAR",
            help=f"the environment variable holding the {role} endpoint's key (default: no "
            "key; $OPENAI_API_KEY for OpenAI's API)",
        )
    p.add_argument("--endpoint_api", choices=APIS, default="completions")
    p.add_argument("--endpoint_concurrency", type=int, default=8, help="requests per role")
    p.add_argument("--request_timeout", type=float, default=120.0, help="seconds")
    p.add_argument("--max_retries", type=int, default=4)
    p.add_argument("--planner_prompt_type", "--assistant_prompt_type", default="toolbench_planner")
    p.add_argument("--caller_prompt_type", default="toolbench_caller")
    p.add_argument(
        "--summarizer_prompt_type", "--conclusion_prompt_type", default="toolbench_summarizer"
    )
    p.add_argument("--backbone_prompt_type", default="toolbench_backbone")
    p.add_argument(
        "--per_device_eval_batch_size",
        type=int,
        default=16,
        help="prompts decoded together",
    )
    p.add_argument(
        "--reuse_prefixes",
        type=_bool,
        default=True,
        help="prefill prompts one by one, each reusing the KV cache of the prefix it shares "
        "with the previous one, then decode them in batches (default); false: batches sorted "
        "by length, left-padded, prefilled together",
    )
    p.add_argument("--max_batch_tokens", type=int, default=32768)
    p.add_argument("--max_input_length", type=int, default=4096)
    p.add_argument("--max_new_tokens", type=int, default=256)
    p.add_argument("--bf16_full_eval", type=_bool, nargs="?", const=True, default=False)
    p.add_argument("--do_sample", type=_bool, nargs="?", const=True, default=False)
    p.add_argument(
        "--temperature",
        type=float,
        help="sample at this temperature (0: greedy); --do_sample alone samples at 1.0. "
        "ToolBench's ToolLLaMA samples at 0.5",
    )
    p.add_argument("--seed", type=int, default=0)


def sampling_temperature(args: argparse.Namespace) -> float:
    """The roles' temperature: ``--temperature``, else 1.0 with ``--do_sample``, else 0
    (greedy, the default: a run repeats)."""
    if args.temperature is not None:
        if args.temperature < 0:
            raise SystemExit(f"--temperature must not be negative, not {args.temperature}")
        return args.temperature
    return 1.0 if args.do_sample else 0.0


def generation_settings(args: argparse.Namespace) -> GenerationSettings:
    """The local models' generation settings of :func:`add_role_arguments`' flags."""
    return GenerationSettings(
        max_new_tokens=args.max_new_tokens,
        max_input_length=args.max_input_length,
        batch_size=args.per_device_eval_batch_size,
        reuse_prefixes=args.reuse_prefixes,
        max_batch_tokens=args.max_batch_tokens,
        do_sample=sampling_temperature(args) > 0,
        temperature=sampling_temperature(args) or 1.0,
        seed=args.seed,
        dtype="bf16" if args.bf16_full_eval else "auto",
    )


def prompt_types_of(args: argparse.Namespace) -> dict[str, str]:
    """Each role's prompt type, from :func:`add_role_arguments`' flags."""
    return {role: getattr(args, f"{role}_prompt_type") for role in (*ROLES, "backbone")}


def _bool(text: str) -> bool:
    return str(text).lower() in ("1", "true", "t", "yes")
