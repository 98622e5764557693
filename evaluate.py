"""Evaluate a model on the paper's benchmarks (AIME24, AMC23, MATH500, OlympiadBench, LiveCodeBench) or on your own.

    python evaluate.py --model out/merged --tasks aime24,amc23,math500,olympiadbench,livecodebench --backend vllm
    python evaluate.py --model Qwen/Qwen2.5-32B-Instruct --adapter out/final --tasks aime24 --n 8 --temperature 0.7
    python evaluate.py --model my-model --backend openai --base-url http://a:8000/v1,http://b:8000/v1 --tasks math500
    python evaluate.py --responses my_generations.jsonl --tasks math500          # score only, no model

Writes DIR/samples.jsonl (one scored sample per line, with the backend's finish_reason), DIR/results.json (accuracy =
mean pass@1 over samples, unbiased pass@k, the shares with no answer and cut off at --max-tokens, LiveCodeBench by
difficulty, the settings used) and prints a table. Samples are written as each chunk finishes: rerun the same command
to resume after a kill.
Past one GPU: --data-parallel-size (vLLM replicas), several --base-url servers; a thinking budget (s1's budget
forcing) with --max-thinking-tokens, and the test-time scaling curve with --thinking-budgets (docs/evaluation.md:
"Evaluation at scale", "Thinking budget").
A custom task is a JSONL file of {"id", "problem", "answer"} (maths) or {"id", "problem", "tests"[, "starter_code"]}
(code; tests = [{"input", "output", "testtype": "stdin"|"functional"}]). Data sources: data/eval/README.md.
A --responses record names its task as --tasks does: a built-in name, or a custom task's file stem or path.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import multiprocessing
import os
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, wait
from pathlib import Path

from tqdm import tqdm

import generation
import grading
import sandbox
import task_results
import thinking_budget
import utils
from markup import PROMPT_STYLES, eval_messages
from utils import DataError

BUILTIN_TASKS = ("aime24", "amc23", "math500", "olympiadbench", "livecodebench")
# Settings that change what a sample is: a rerun into the same folder must match them.
# --n may differ (samples are indexed).
GENERATION_KEYS = ("model", "adapter", "responses", "backend", "prompt_style", "chat_template", "chat_template_kwargs")
GENERATION_KEYS += ("temperature", "top_p", "max_tokens", "seed", "max_thinking_tokens")
FORCING_KEYS = ("min_thinking_tokens", "max_answer_tokens")  # they change a sample only under a thinking budget


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="HF name or folder (vllm, hf), or the name the server knows it by (openai)")
    p.add_argument("--adapter", help="LoRA adapter folder, evaluated on top of --model without merging")
    p.add_argument("--responses", help="JSONL of {task, id, response[, sample, finish_reason]}: score, no model")
    p.add_argument("--tasks", required=True, help=f"comma list of {','.join(BUILTIN_TASKS)} or custom task files")
    p.add_argument(
        "--backend",
        choices=["vllm", "hf", "openai"],
        default="vllm",
        help="vllm: fast on GPU; hf: plain transformers, works on CPU; openai: any OpenAI-compatible server",
    )
    p.add_argument(
        "--n",
        type=int,
        default=1,
        help="samples per problem: pass@k for k <= n, and avg@n with its standard error (open-r1: 64 for AIME, 4 "
        "for MATH500)",
    )
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy, SkyThought's setting for one sample")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass")
    p.add_argument("--max-tokens", type=int, default=32768, help="tokens per sample; paper: 32768 (long CoT)")
    p.add_argument("--seed", type=int, default=0, help="base of the per-sample seeds: a resumed run redraws the same")
    p.add_argument(
        "--prompt-style",
        choices=list(PROMPT_STYLES),
        default="sky-t1",
        help="sky-t1: SkyThought's evaluation (Sky-T1 system prompt, 'Return your final response within \\boxed{}.' "
        "before the problem); sky-t1-bare: the paper's Table 2 harness (Qwen2.5-Math evaluation, prompt type 'Sky-T1': "
        "the Sky-T1 system prompt, then the bare question); step-by-step: no system prompt, the problem, then 'Please "
        "reason step by step, and put your final answer within \\boxed{}.'; none: the bare problem",
    )
    p.add_argument(
        "--chat-template", default="model", help="model|chatml|Jinja file: the template the model was trained with"
    )
    p.add_argument(
        "--chat-template-kwargs",
        type=utils.chat_template_kwargs,
        default={},
        metavar="JSON",
        help="variables for the template, as in training, e.g. '{\"enable_thinking\": false}' (Qwen3); openai: sent "
        "as the request's chat_template_kwargs (vllm serve applies them)",
    )
    p.add_argument("--output-dir", help="default out/eval/<model or responses name>; rerun into it to resume")
    p.add_argument("--limit", type=int, help="only the first N problems of each task, for quick checks")
    p.add_argument("--workers", type=int, default=os.cpu_count(), help="scoring processes: sympy, sandboxed tests")
    p.add_argument(
        "--regrade-errors",
        action="store_true",
        help="score again the samples whose grading failed (field grader_error in samples.jsonl), e.g. after fixing "
        "the grader; a rerun otherwise keeps them, counted as wrong",
    )
    p.add_argument("--batch-size", type=int, default=8, help="hf: sequences generated together")
    p.add_argument("--tensor-parallel-size", type=int, default=1, help="vllm: GPUs the model is split over")
    p.add_argument(
        "--data-parallel-size",
        type=int,
        default=1,
        help="vllm: engine replicas, each on its own --tensor-parallel-size GPUs, sharing the jobs chunk by chunk; "
        "replicas beat one wide engine for a model that fits fewer GPUs (32B on 8: 4 x TP 2, SkyThought PR #63)",
    )
    p.add_argument(
        "--chunk-size", type=int, default=1024, help="vllm: samples per call; a kill loses one at most (per replica)"
    )
    p.add_argument(
        "--base-url",
        default="http://localhost:8000/v1",
        help="openai: server root (vllm serve's default), or several, comma-separated (one vllm serve per node): each "
        "request goes to the least loaded; one that stops answering leaves the rotation and is tried again later",
    )
    p.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", "EMPTY"), help="openai: $OPENAI_API_KEY")
    p.add_argument(
        "--concurrency", type=int, default=32, help="openai: requests in flight per server; servers batch them"
    )
    p.add_argument(
        "--max-retries",
        type=int,
        default=5,
        help="openai: retries of a request after 429/5xx/network errors, on another server or after a backoff",
    )
    p.add_argument("--request-timeout", type=float, default=3600.0, help="openai: seconds per request (long CoT)")
    p.add_argument(
        "--max-thinking-tokens",
        type=int,
        help="thinking budget (s1's budget forcing): the thought is ended at N tokens with the model's own "
        "end-of-thought markup and 'Final Answer: ', then the answer is generated; else it runs to --max-tokens",
    )
    p.add_argument(
        "--min-thinking-tokens",
        type=int,
        default=0,
        help="s1's 'Wait': an end of thought before N tokens is replaced with 'Wait', so the model thinks on",
    )
    p.add_argument(
        "--max-answer-tokens",
        type=int,
        default=2048,
        help="with a thinking budget: tokens for the answer after the thought (enough for a boxed answer or a program)",
    )
    p.add_argument(
        "--thinking-budgets",
        type=budget_list,
        metavar="N,N,...",
        help="run the same problems at each thinking budget (into OUTPUT_DIR/budget-N) and write the test-time scaling "
        "table and plot, accuracy against budget per task (s1's Figure 1): test_time_scaling.{md,json,png}",
    )
    cfg = p.parse_args(argv)
    if (cfg.model is None) == (cfg.responses is None):
        p.error("give exactly one of --model (generate and score) or --responses (score existing generations)")
    if min(cfg.n, cfg.workers, cfg.batch_size, cfg.chunk_size, 1 if cfg.limit is None else cfg.limit) < 1:
        p.error("--n, --limit, --workers, --batch-size and --chunk-size must be at least 1")
    if min(cfg.data_parallel_size, cfg.max_answer_tokens) < 1:
        p.error("--data-parallel-size and --max-answer-tokens must be at least 1")
    if cfg.max_thinking_tokens is not None and cfg.max_thinking_tokens < 1:
        p.error("--max-thinking-tokens must be at least 1 (leave it out for no thinking budget)")
    if cfg.min_thinking_tokens < 0:
        p.error("--min-thinking-tokens must be at least 0 (0: no 'Wait')")
    thinking = generation.job_budget(cfg) is not None
    if thinking and cfg.responses:
        p.error("--responses are scored as given: a thinking budget applies to generation (--model)")
    if cfg.thinking_budgets and cfg.max_thinking_tokens:
        p.error("give --thinking-budgets (several runs) or --max-thinking-tokens (one), not both")
    if cfg.min_thinking_tokens > min([cfg.max_thinking_tokens or cfg.max_tokens, *(cfg.thinking_budgets or [])]):
        p.error("--min-thinking-tokens is above the thinking budget: the thought could never reach it")
    if cfg.data_parallel_size > 1 and cfg.backend != "vllm":
        p.error("--data-parallel-size is for --backend vllm (openai: list one server per node in --base-url)")
    if cfg.adapter and cfg.backend == "openai":
        p.error("--adapter with --backend openai: load the adapter in the server and pass its served name as --model")
    if cfg.chat_template != "model" and cfg.backend == "openai" and cfg.model and not thinking:
        p.error("--chat-template with --backend openai: the server applies its own (vllm serve --chat-template FILE)")
    if cfg.model and cfg.backend == "vllm" and importlib.util.find_spec("vllm") is None:
        raise SystemExit("--backend vllm: vllm is not installed (pip install -r requirements-gpu.txt); or --backend hf")
    return cfg


def budget_list(text: str) -> list[int]:
    try:
        budgets = sorted({int(b) for b in text.split(",") if b.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma list of token counts: {text!r}") from None
    if not budgets or budgets[0] < 1:
        raise argparse.ArgumentTypeError(f"budgets must be at least 1 token: {text!r}")
    return budgets


# ----------------------------------------------------------------------------- tasks and prompts


def code_problem(pid: str, record: dict) -> dict:
    tests = record["tests"]
    if not isinstance(tests, list) or not tests:
        raise ValueError("field 'tests' must be a non-empty list")
    for i, test in enumerate(tests):
        if not isinstance(test, dict) or not all(isinstance(test.get(f), str) for f in ("input", "output")):
            raise ValueError(f"field 'tests[{i}]' needs string 'input' and 'output'")
        if test.get("testtype") not in ("stdin", "functional"):
            raise ValueError(f"field 'tests[{i}].testtype' must be 'stdin' or 'functional'")
    if len({test["testtype"] for test in tests}) > 1:
        raise ValueError("field 'tests' mixes 'stdin' and 'functional' tests")
    problem = {"id": pid, "kind": "code", "problem": record["problem"], "tests": tests}
    return problem | {"starter_code": record.get("starter_code") or "", "difficulty": record.get("difficulty")}


def builtin_problem(task: str, record: dict) -> dict:
    if task == "livecodebench":  # 200 problems lack a question_id: their statement's hash is stable across copies
        pid = record.get("question_id") or "sha1-" + hashlib.sha1(record["problem"].encode()).hexdigest()[:12]
        return code_problem(str(pid), record)
    pid = record["unique_id"] if task == "math500" else record["id"]
    text = record["question"] if task == "olympiadbench" else record["problem"]
    return {"id": str(pid), "kind": "math", "problem": text, "answer": grading.answer_from_record(record)}


def custom_problem(record: dict) -> dict:
    pid = record["id"]
    if not isinstance(pid, (str, int)) or not isinstance(record["problem"], str):
        raise ValueError("field 'id' must be a string or integer and 'problem' a string")
    if "answer" in record:
        if record["answer"] is None:
            raise ValueError("field 'answer' is null")
        if not isinstance(record["answer"], (str, int, float, list)):
            raise ValueError("field 'answer' must be a string, number or list")
        return {"id": str(pid), "kind": "math", "problem": record["problem"], "answer": record["answer"]}
    if "tests" not in record:
        raise ValueError("field 'answer' (maths) or 'tests' (code) missing")
    if not isinstance(record.get("starter_code") or "", str):
        raise ValueError("field 'starter_code' must be a string")
    return code_problem(str(pid), record)


def load_task(spec: str) -> tuple[str, list[dict]]:
    builtin = spec in BUILTIN_TASKS
    if not builtin and not (spec.endswith((".jsonl", ".json")) or Path(spec).exists()):
        raise DataError(f"--tasks: unknown task '{spec}' (built-in: {', '.join(BUILTIN_TASKS)}; or a .jsonl task file)")
    path = utils.DATA_DIR / "eval" / f"{spec}.jsonl" if builtin else Path(spec)
    problems, seen = [], set()
    for line, record in utils.iter_json_records(path):
        try:
            problem = builtin_problem(spec, record) if builtin else custom_problem(record)
        except KeyError as e:
            raise DataError(f"{path}:{line}: field {e} missing") from None
        except ValueError as e:
            raise DataError(f"{path}:{line}: {e}") from None
        if problem["id"] in seen:
            raise DataError(f"{path}:{line}: duplicate id '{problem['id']}'")
        seen.add(problem["id"])
        problems.append(problem)
    if not problems:
        raise DataError(f"{path}: no problems")
    return (spec if builtin else path.stem), problems


def sample_seed(base: int, task: str, pid: str, sample: int) -> int:
    """A seed per sample, independent of batching, so a resumed run regenerates exactly what a kill lost."""
    digest = hashlib.sha256(f"{base}/{task}/{pid}/{sample}".encode()).digest()
    return int.from_bytes(digest[:4], "little") >> 1  # 31 bits fit every backend's seed type


def load_responses(path: str, tasks: dict[str, list[dict]], aliases: dict[str, str]) -> dict[tuple, dict]:
    """Read --responses; a record's task is a built-in name, or a custom task's file stem or its path."""
    ids = {name: {p["id"] for p in problems} for name, problems in tasks.items()}
    responses, next_sample = {}, {}
    for line, record in utils.iter_json_records(path):
        where = f"{path}:{line}"
        for field in ("task", "id", "response"):
            if field not in record:
                raise DataError(f"{where}: field '{field}' missing")
        if not isinstance(record["task"], str):
            raise DataError(f"{where}: field 'task' must be a string")
        task, pid = aliases.get(record["task"]) or aliases.get(os.path.abspath(record["task"])), str(record["id"])
        if task is None:
            raise DataError(f"{where}: unknown task '{record['task']}' (not among --tasks: {', '.join(tasks)})")
        if pid not in ids[task]:
            raise DataError(f"{where}: id '{pid}' not in task '{task}'")
        if not isinstance(record["response"], str):
            raise DataError(f"{where}: field 'response' must be a string")
        if not isinstance(record.get("finish_reason"), (str, type(None))):
            raise DataError(f"{where}: field 'finish_reason' must be a string ('stop', 'length', ...) or null")
        sample = record.get("sample", next_sample.get((task, pid), 0))
        if not isinstance(sample, int) or sample < 0:
            raise DataError(f"{where}: field 'sample' must be an integer >= 0")
        if (task, pid, sample) in responses:
            raise DataError(f"{where}: duplicate sample {sample} of task '{task}' id '{pid}'")
        next_sample[(task, pid)] = max(next_sample.get((task, pid), 0), sample + 1)
        fields = [record.get(field) for field in ("prompt", "response", "tokens", "finish_reason")]
        responses[(task, pid, sample)] = generation.generation({"task": task, "id": pid, "sample": sample}, *fields)
    return responses


# ----------------------------------------------------------------------------- scoring and results


def read_resumable(path: Path) -> list[dict]:
    """Records of an append-only file. A last line cut short by a kill is dropped, and cut off the file."""
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8", errors="replace")
    lines, records = text.split("\n"), []  # the last line is "" unless the last append lost its end
    for number, line in enumerate(lines, 1):
        try:
            records.extend([json.loads(line)] if line.strip() else [])
        except json.JSONDecodeError:
            if number < len(lines):
                raise SystemExit(f"{path}:{number}: invalid JSON; fix or delete this line to resume") from None
            lines[-1] = ""
    if not text.endswith("\n") and text:  # keep a whole last record that only misses its newline, and end the file
        utils.atomic_write_text(path, "\n".join(lines + [""] if lines[-1] else lines))
    return records


def exit_with_parent(parent_pid: int) -> None:
    """Pool initializer: after a kill -9 (or the OOM killer) of the run, its workers exit instead of idling forever."""

    def watch():
        while True:
            time.sleep(5)
            try:
                os.kill(parent_pid, 0)
            except ProcessLookupError:
                os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def score_sample(grade, *args, **kwargs) -> dict:
    """Run in a scoring worker: grade one sample. An exception from the grader is that sample's `grader_error` (type
    and message, one line) and the sample counts as wrong: one odd response must not end a run of thousands."""
    try:
        return grade(*args, **kwargs)
    except Exception as e:
        return {"extracted": None, "correct": False, "grader_error": " ".join(f"{type(e).__name__}: {e}".split())[:500]}


def generate_and_score(
    cfg, problems: dict[tuple, dict], unscored: list[dict], jobs: list[dict], out_dir: Path, backend
) -> list[dict]:
    """Score in worker processes while generation goes on; append every sample the moment it is final.
    backend() -> (chunk size, generate_chunk), set up on first use (generation.py)."""
    total = len(unscored) + len(jobs)
    if total == 0:
        return []
    scored = []
    # Not fork: forking a process that holds CUDA or server threads can deadlock the children. The forkserver starts
    # clean and forks every worker from one copy of the preloaded modules.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__, "grading", "sandbox"])
    pool = ProcessPoolExecutor(
        min(cfg.workers, total), mp_context=context, initializer=exit_with_parent, initargs=(os.getpid(),)
    )
    bar = tqdm(total=total, desc="score", unit="sample", position=1 if jobs else 0)
    pending = {}

    def submit(gen: dict) -> None:
        problem = problems[(gen["task"], gen["id"])]
        if problem["kind"] == "math":
            # A response cut off at --max-tokens has no answer, whatever number stands near its end.
            finish = gen.get("finish_reason")  # absent from generations.jsonl files of older versions
            args = (grading.grade_math, gen["response"], problem["answer"])
            pending[pool.submit(score_sample, *args, finish_reason=finish)] = gen
        else:
            args = (sandbox.grade_code, gen["response"], problem["tests"], problem["starter_code"])
            pending[pool.submit(score_sample, *args)] = gen

    def collect(block: bool) -> None:
        for future in wait(pending, timeout=None if block else 0).done:
            gen, result = pending.pop(future), future.result()
            record = {**gen, "extracted": result["extracted"], "correct": bool(result["correct"])}
            record |= {key: result[key] for key in ("verdicts", "grader_error") if key in result}
            if "grader_error" in record:
                where = f"{gen['task']} id {gen['id']} sample {gen['sample']}"
                tqdm.write(f"grader error, counted as wrong: {where}: {record['grader_error']}", file=sys.stderr)
            utils.append_jsonl(samples_file, record)
            scored.append(record)
            bar.update()

    with pool, open(out_dir / "samples.jsonl", "a", encoding="utf-8") as samples_file:
        for gen in unscored:
            submit(gen)
        if jobs:  # the chunk loop every backend runs in
            chunk_size, generate_chunk = backend()
            chunks = (jobs[start : start + chunk_size] for start in range(0, len(jobs), chunk_size))
            stream = (gen for chunk in chunks for gen in generate_chunk(chunk))
            # Raw generations are kept apart, so a kill while scoring does not throw away GPU hours.
            with open(out_dir / "generations.jsonl", "a", encoding="utf-8") as generations_file:
                for gen in tqdm(stream, total=len(jobs), desc="generate", unit="sample", position=0):
                    utils.append_jsonl(generations_file, gen)
                    submit(gen)
                    collect(block=False)
        collect(block=True)
    bar.close()
    return scored


# ----------------------------------------------------------------------------- main


def check_config(out_dir: Path, cfg) -> None:
    """Refuse to mix samples drawn with different settings in one folder; then record this run's settings."""
    path = out_dir / "config.json"
    now = {k: v for k, v in vars(cfg).items() if k != "api_key"}  # never write a secret to disk
    if path.exists():
        saved = json.loads(path.read_text(encoding="utf-8"))
        # A key missing from the saved file was not checked by the version that wrote it: nothing to compare.
        before, after = sample_settings(argparse.Namespace(**(vars(cfg) | saved))), sample_settings(cfg)
        keys = [k for k in (*GENERATION_KEYS, *FORCING_KEYS) if k in saved and (k in before or k in after)]
        changed = [f"{k} {saved[k]!r} -> {now[k]!r}" for k in keys if before.get(k) != after.get(k)]
        if changed:
            raise SystemExit(
                f"{path}: this folder holds samples made with other settings ({'; '.join(changed)}); "
                "use another --output-dir so samples are not mixed"
            )
    utils.atomic_write_text(path, json.dumps(now, indent=2) + "\n")


def sample_settings(cfg) -> dict:
    """The settings that change a sample: GENERATION_KEYS, and FORCING_KEYS where a thinking budget is used."""
    keys = GENERATION_KEYS + (FORCING_KEYS if generation.job_budget(cfg) is not None else ())
    return {key: getattr(cfg, key) for key in keys}


def run_settings(cfg) -> dict:
    """What results.json records of how its samples were made: every setting that changes a sample, and the sampling
    parameters the backend was sent; for --responses, the file they came from."""
    if cfg.responses:
        return {"responses": cfg.responses}
    settings = {key: value for key, value in sample_settings(cfg).items() if key != "responses"}
    return settings | generation.sampling_params(cfg)


def main(cfg) -> dict:
    specs = [spec.strip() for spec in cfg.tasks.split(",") if spec.strip()]
    try:
        named = {spec: load_task(spec) for spec in specs}
        tasks = dict(named.values())
        # --responses names a custom task by its file stem, or by its path as given (or the same file's path).
        aliases = {name: name for name in tasks} | {os.path.abspath(s): name for s, (name, _) in named.items()}
        responses = load_responses(cfg.responses, tasks, aliases) if cfg.responses else None
    except DataError as e:
        raise SystemExit(str(e)) from None
    if len(tasks) != len(specs):
        raise SystemExit(f"--tasks {cfg.tasks}: two tasks have the same name")
    selected = {name: problems[: cfg.limit] for name, problems in tasks.items()}
    problems = {(name, p["id"]): p for name, ps in selected.items() for p in ps}
    if responses is None:
        wanted = [(name, pid, s) for name, pid in problems for s in range(cfg.n)]
        if cfg.n > 1 and cfg.temperature == 0:
            print("note: --n > 1 with --temperature 0 draws the same greedy sample n times", file=sys.stderr)
    else:  # every response given counts, however many per problem
        wanted = [key for key in responses if key[:2] in problems]
        for name in selected:
            if not any(key[0] == name for key in wanted):
                where = f" in its first {cfg.limit} problems" if cfg.limit else ""
                raise SystemExit(f"{cfg.responses}: no responses for task '{name}'{where}")
    run_name = Path(cfg.responses).stem if cfg.responses else Path(cfg.model).name
    if cfg.adapter:
        run_name += f"+{Path(cfg.adapter).name}"
    out_dir = Path(cfg.output_dir or Path("out") / "eval" / run_name)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_config(out_dir, cfg)
    made = {}

    def backend():
        """Set up once: the runs of --thinking-budgets share the engine. It is sized for every problem's prompt and
        the largest budget, not for the jobs a run (or a resume) happens to start with."""
        if not made:
            everyone = make_jobs(cfg, problems, [(t, pid, 0) for t, pid in problems])
            made["backend"] = getattr(generation, f"{cfg.backend}_backend")(cfg, everyone)
        return made["backend"]

    if not cfg.thinking_budgets:
        return evaluate_into(cfg, out_dir, selected, problems, wanted, responses, backend)
    by_budget = {}
    for budget in cfg.thinking_budgets:  # the same problems and seeds at each budget
        budget_cfg = argparse.Namespace(**vars(cfg) | {"max_thinking_tokens": budget})
        folder = out_dir / f"budget-{budget}"
        folder.mkdir(exist_ok=True)
        check_config(folder, budget_cfg)
        print(f"thinking budget {budget}:", file=sys.stderr)
        by_budget[budget] = evaluate_into(budget_cfg, folder, selected, problems, wanted, responses, backend)
    thinking_budget.write_scaling(out_dir, by_budget)
    print(thinking_budget.scaling_table(by_budget))
    print(f"wrote {out_dir / 'test_time_scaling.png'} and test_time_scaling.{{md,json}}")
    return by_budget


def make_jobs(cfg, problems: dict[tuple, dict], keys: list[tuple]) -> list[dict]:
    """The generation jobs (generation.py) of the (task, id, sample) keys."""
    budget = {} if generation.job_budget(cfg) is None else {"max_thinking_tokens": generation.job_budget(cfg)}
    return [
        {"task": t, "id": pid, "sample": s, "seed": sample_seed(cfg.seed, t, pid, s)}
        | {"messages": eval_messages(problems[(t, pid)], cfg.prompt_style)}
        | budget
        for t, pid, s in keys
    ]


def evaluate_into(cfg, out_dir: Path, selected, problems, wanted, responses, backend) -> dict:
    """Generate what out_dir lacks, score it, and write results.json."""
    if responses is not None:
        generated = responses
    else:
        generated = {(g["task"], g["id"], g["sample"]): g for g in read_resumable(out_dir / "generations.jsonl")}
    done = {(r["task"], r["id"], r["sample"]): r for r in read_resumable(out_dir / "samples.jsonl")}
    if cfg.regrade_errors and any("grader_error" in r for r in done.values()):
        done = {key: r for key, r in done.items() if "grader_error" not in r}  # their new scores replace them
        utils.write_jsonl(out_dir / "samples.jsonl", done.values())
    unscored = [generated[key] for key in wanted if key not in done and key in generated]
    jobs = make_jobs(cfg, problems, [key for key in wanted if key not in done and key not in generated])
    finished = len(wanted) - len(unscored) - len(jobs)
    print(f"{len(wanted)} samples: {finished} done, {len(unscored)} to score, {len(jobs)} to generate", file=sys.stderr)
    for record in generate_and_score(cfg, problems, unscored, jobs, out_dir, backend):
        done[(record["task"], record["id"], record["sample"])] = record

    scored = {name: {} for name in selected}
    for t, pid, s in wanted:
        scored[t].setdefault(pid, []).append(done[(t, pid, s)])
    results = {
        name: task_results.summarise(ps, scored[name]) | {"settings": run_settings(cfg)}
        for name, ps in selected.items()
    }
    utils.atomic_write_text(out_dir / "results.json", json.dumps(results, indent=2) + "\n")
    print(task_results.results_table(results))
    print(f"wrote {out_dir / 'results.json'} and {out_dir / 'samples.jsonl'}")
    return results


if __name__ == "__main__":
    main(parse_args())
