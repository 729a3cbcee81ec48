"""Generate a small, deterministic toy dataset in ToolBench's answer-file layout.

The files mimic what ToolBench's DFS and CoT runs write (``answer/G*_answer/*.json`` plus
``test_query_ids/``), and the queries in the test-instruction format (``test_instruction/``,
each with its tools' ``api_list``: what a tool server and an agent read), so that the
processing pipeline, the tool server and the agent can be exercised in tests and demos without
the real data. Every tool, query and answer here is invented, and a given seed always yields
the same bytes. The trajectories cover the awkward cases a converter must handle: give-ups,
retries after a "diversity" prompt, hallucinated function names, broken Finish arguments, and
so on.

Usage: ``python -m process_data.sample_data --output_dir data/toolbench_sample [--seed 0]``
"""

from __future__ import annotations

import argparse
import json
import random
import string
import sys
from pathlib import Path
from typing import Any

from process_data.protocol import (
    ACTION_INPUT_NODE,
    ACTION_NODE,
    FINISH,
    FINISH_FUNCTION,
    GIVE_ANSWER,
    GIVE_UP,
    GIVE_UP_AND_RESTART,
    HALLUCINATED_NAME,
    THOUGHT_NODE,
    function_name,
)

Message = dict[str, Any]

CITIES = ["Lyon", "Porto", "Osaka", "Quito", "Tartu", "Hobart"]
SKIES = ["clear", "light rain", "overcast", "windy", "foggy"]
LENGTHS = [("miles", "km", 1.609344), ("feet", "metres", 0.3048), ("inches", "cm", 2.54)]
INGREDIENTS = {"lentils": ["lentil soup", "lentil curry"], "leek": ["leek tart", "leek gratin"]}
CURRENCIES = ["EUR", "USD", "JPY", "CHF", "SEK"]
JOKES = [
    "My calendar and I broke up. It said I never gave it a date.",
    "The spreadsheet went to therapy because it had too many unresolved cells.",
    "I asked the compass for advice, but it just kept pointing out the obvious.",
]
HOLIDAYS = ["Lantern Walk Day", "Founders' Picnic", "Quiet Harbour Day", "Orchard Festival"]
LONG_DESC = (
    "Lists the upcoming public holidays for a two-letter country code, as published by the "
    "regional open data portal. Each entry carries the holiday's local name, its date in ISO "
    "format, and whether shops and public offices are expected to close. Dates are computed for "
    "the current and the following calendar year, and regional holidays are included on request."
)


def _length(r: random.Random) -> dict[str, Any]:
    src, dst, factor = r.choice(LENGTHS)
    value = r.randint(2, 40)
    return {"value": value, "from_unit": src, "to_unit": dst, "result": round(value * factor, 2)}


def _recipes(r: random.Random) -> dict[str, Any]:
    ingredient = r.choice(sorted(INGREDIENTS))
    names = " and ".join(INGREDIENTS[ingredient])
    return {"ingredient": ingredient, "max_minutes": r.choice([30, 45, 60]), "names": names}


# fmt: off
# Each API: parameters as (name, type, description or None, example, required), a draw of
# random values, and templates for the tool output, the query phrase and the answer sentence.
TOOLS: list[dict[str, Any]] = [
    {"tool": "toy_weather", "apis": [
        {"api": "get_forecast", "desc": "Returns a 3-day forecast for a city.",
         "params": [("city", "string", "City name", "Lyon", True),
                    ("days", "number", "", 3, False)],
         "draw": lambda r: {"city": r.choice(CITIES), "days": 3,
                            "highs": "/".join(str(r.randint(4, 31)) for _ in range(3))},
         "out": "{days}-day forecast for {city}: highs of {highs} C.",
         "ask": "what the next three days look like in {city}",
         "tell": "{city} will see highs of {highs} C over the next three days."},
        {"api": "get_current_conditions", "desc": "Current temperature, sky and wind for a city.",
         "params": [("city", "string", "City name", "Porto", True)],
         "draw": lambda r: {"city": r.choice(CITIES), "temp": r.randint(-3, 33),
                            "sky": r.choice(SKIES), "wind": r.randint(0, 45)},
         "out": "Now in {city}: {temp} C, {sky}, wind {wind} km/h.",
         "ask": "what the weather is like in {city} right now",
         "tell": "It is {temp} C and {sky} in {city}."}]},
    {"tool": "toy_unit_converter", "apis": [
        {"api": "convert_length", "desc": "Converts a length between two units.",
         "params": [("value", "number", "Amount to convert", 10, True),
                    ("from_unit", "string", "Source unit", "miles", True),
                    ("to_unit", "string", "Target unit", "km", True)],
         "draw": _length,
         "out": "{value} {from_unit} = {result} {to_unit}",
         "ask": "how many {to_unit} are in {value} {from_unit}",
         "tell": "{value} {from_unit} is {result} {to_unit}."}]},
    {"tool": "toy_recipe_finder", "apis": [
        {"api": "search_recipes", "desc": "Finds recipes that use an ingredient.",
         "params": [("ingredient", "string", "Main ingredient", "leek", True),
                    ("max_minutes", "number", "Longest cooking time", 45, False)],
         "draw": _recipes,
         "out": "2 recipes with {ingredient} under {max_minutes} min: {names}.",
         "ask": "a quick recipe with {ingredient}",
         "tell": "With {ingredient} you could make {names}."}]},
    {"tool": "toy_currency_rates", "apis": [
        {"api": "get_exchange_rate", "desc": "Latest rate from one currency to another.",
         "params": [("base", "string", "Currency to convert from", "EUR", True),
                    ("quote", "string", "Currency to convert to", "USD", True)],
         "draw": lambda r: dict(zip(("base", "quote"), r.sample(CURRENCIES, 2), strict=True),
                                rate=round(r.uniform(0.4, 1.6), 4)),
         "out": "1 {base} = {rate} {quote}",
         "ask": "the current {base} to {quote} rate",
         "tell": "One {base} buys {rate} {quote}."}]},
    {"tool": "toy_joke_box", "apis": [
        {"api": "random_joke", "desc": "Returns a random short joke.",
         "params": [("category", "string", None, "office", False)],
         "draw": lambda r: {"category": "office", "joke": r.choice(JOKES)},
         "out": "{joke}",
         "ask": "a short joke to lighten the mood",
         "tell": "Here is a joke: {joke}"}]},
    {"tool": "toy_regional_open_data_portal_public_holiday_calendar", "apis": [
        {"api": "list_upcoming_public_holidays_by_country_code", "desc": LONG_DESC,
         "params": [("country", "string", "ISO 3166 alpha-2 code", "PT", True)],
         "draw": lambda r: {"country": r.choice(["PT", "FR", "EE", "JP"]),
                            "first": r.choice(HOLIDAYS),
                            "day": f"2024-0{r.randint(1, 9)}-1{r.randint(0, 9)}"},
         "out": "Next public holiday in {country}: {first} on {day}.",
         "ask": "when the next public holiday in {country} is",
         "tell": "The next holiday in {country} is {first} on {day}."}]},
]
# fmt: on

# One trajectory shape per DFS file, cycled in order over G1, G2 then G3 (see --per_group).
SHAPES = ["answer", "hallucination", "object_response", "timeout_give_up", "diversity"]
SHAPES += ["give_up_first", "answer", "bad_finish_json", "no_final_answer", "invalid"]
OPENERS = ["I'm planning a weekend away.", "Quick question for my team chat.", "Help me out here."]
SYSTEM = (
    "You are ToyAgent. Solve the user's task by calling functions, one per step: think about the "
    f"current state, then call a function. When you have enough information, call {FINISH} with "
    f'return_type "{GIVE_ANSWER}" and a complete final answer; if you are stuck, call {FINISH} '
    f'with return_type "{GIVE_UP_AND_RESTART}". Functions you can call: {{names}}.'
)
DIVERSITY = (
    "This is not the first time you try this task, all previous trails failed.\n"
    "Earlier attempts from this state already tried these actions:\n{actions}\n"
    "Pick a different action this time."
)


def function_schema(tool: str, api: dict[str, Any]) -> dict[str, Any]:
    """The ToolBench function entry for one API of a toy tool."""
    props: dict[str, Any] = {}
    for name, kind, desc, example, _ in api["params"]:
        props[name] = {"type": kind} | ({} if desc is None else {"description": desc})
        props[name]["example_value"] = example
    return {
        "name": function_name(api["api"], tool),
        "description": f'This is the subfunction for tool "{tool}", you can use this tool.'
        f'The description of this function is: "{api["desc"]}"',
        "parameters": {
            "type": "object",
            "properties": props,
            "required": [p[0] for p in api["params"] if p[4]],
            "optional": [p[0] for p in api["params"] if not p[4]],
        },
    }


def draw_step(tool: str, api: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """One call to ``api``: its arguments, tool output, the query/answer phrases, and the facts
    a correct final answer reports (the values its answer sentence names that the tool found,
    not the ones the query gave)."""
    values = api["draw"](rng)
    args = {p[0]: values[p[0]] for p in api["params"] if p[0] in values}
    told = [field for _, field, _, _ in string.Formatter().parse(api["tell"]) if field]
    return {
        "tool": tool,
        "api": api["api"],
        "name": function_name(api["api"], tool),
        "args": json.dumps(args, indent=2),
        "out": api["out"].format(**values),
        "obj": {k: v for k, v in values.items() if k not in args} or values,
        "ask": api["ask"].format(**values),
        "tell": api["tell"].format(**values),
        "facts": [str(values[field]) for field in told if field not in args],
    }


def _content(response: Any, error: str = "") -> str:
    return json.dumps({"error": error, "response": response})


def build_messages(
    shape: str, steps: list[dict[str, Any]], query: str, names: list[str], cot: bool
) -> tuple[list[Message], str]:
    """The full conversation for one trajectory shape, and its raw Finish arguments."""
    msgs: list[Message] = [
        {"role": "system", "content": SYSTEM.format(names=", ".join(names))},
        {"role": "user", "content": f"\n{query}\nBegin!\n"},
    ]

    def act(name: str, args: str, thought: str | None, content: str | None = None) -> None:
        if cot and thought:  # CoT runs store the thought as its own assistant turn
            msgs.append({"role": "assistant", "content": thought})
            thought = None
        call = {"name": name, "arguments": args}
        msgs.append({"role": "assistant", "content": thought, "function_call": call})
        if content is not None:
            msgs.append({"role": "function", "name": name, "content": content})

    give_up = json.dumps({"return_type": GIVE_UP_AND_RESTART}, indent=2)
    if shape == "give_up_first":
        act(FINISH, give_up, "These services look unreliable today, so I will restart.")
        return msgs, give_up
    if shape == "hallucination":
        fake = steps[0]["name"].replace("_for_", "_v2_for_", 1)
        act(
            HALLUCINATED_NAME,
            steps[0]["args"],
            f"Let me try {fake}.",
            _content("", f"No such function name: {fake}"),
        )
    for i, step in enumerate(steps):
        if shape in ("timeout_give_up", "diversity") and i == 0:
            act(
                step["name"],
                step["args"],
                f"Let me look up {step['ask']} first.",
                _content("", "Timeout error: the service did not answer in time"),
            )
            if shape == "timeout_give_up":
                act(FINISH, give_up, "The service keeps timing out, so I will give up.")
                return msgs, give_up
            tried = f"1. {FINISH} with arguments {json.dumps({'return_type': GIVE_UP_AND_RESTART})}"
            msgs.append({"role": "user", "content": DIVERSITY.format(actions=tried)})
        thought = f"I will call {step['name']} to find out {step['ask']}." if i % 2 == 0 else None
        obj = shape == "object_response" and i == 0
        act(step["name"], step["args"], thought, _content(step["obj"] if obj else step["out"]))
    answer = " ".join(step["tell"] for step in steps)
    finish = {"return_type": GIVE_ANSWER, "final_answer": answer}
    if shape == "no_final_answer":
        del finish["final_answer"]
    args = json.dumps(finish, indent=2)
    if shape == "bad_finish_json":
        args = args[: args.rindex(" ")]  # cut mid-answer: no closing quote or brace
    act(FINISH, args, "I have everything I need, so I will give the answer.")
    return msgs, args


def cot_chain(msgs: list[Message], win: bool) -> list[dict[str, Any]]:
    """The ``trys[0].chain`` nodes (Thought / Action / Action Input) for a CoT answer."""
    nodes: list[tuple[str, str, str | None]] = []
    for i, msg in enumerate(msgs):
        if msg["role"] != "assistant":
            continue
        if msg["content"]:
            nodes.append((THOUGHT_NODE, msg["content"], None))
        if "function_call" in msg:
            call = msg["function_call"]
            nxt = msgs[i + 1]["content"] if i + 1 < len(msgs) else _content("final answer given")
            nodes += [
                (ACTION_NODE, call["name"], None),
                (ACTION_INPUT_NODE, call["arguments"], nxt),
            ]
    chain = []
    for depth, (kind, desc, obs) in enumerate(nodes, start=1):
        last = depth == len(nodes)
        node = {
            "is_terminal": last,
            "pruned": False,
            "finished": last and win,
            "depth": depth,
            "node_type": kind,
            "description": desc,
            "Elo": 1000.0,
            "child_count": 0 if last else 1,
            "expand_num": 0,
        }
        if obs is not None:
            node |= {"observation": obs, "observation_code": 0}
        chain.append(node)
    return chain


def _task(
    group: str, qid: int, cot: bool, seed: int
) -> tuple[random.Random, list[dict], list[tuple[str, dict]], list[dict], str]:
    """A toy query's tools, the APIs it calls, their calls and its text (and the generator,
    which the answer goes on drawing from)."""
    rng = random.Random(f"{seed}-{group}-{qid}-{'cot' if cot else 'dfs'}")
    if group == "G1":
        tools = [TOOLS[qid % len(TOOLS)]]
        picked = [(tools[0]["tool"], api) for api in tools[0]["apis"]]
    else:
        tools = sorted(rng.sample(TOOLS, rng.randint(2, 3)), key=TOOLS.index)
        picked = [(t["tool"], rng.choice(t["apis"])) for t in tools]
    steps = [draw_step(tool, api, rng) for tool, api in picked]
    asks = [s["ask"] for s in steps]
    query = (
        f"{rng.choice(OPENERS)} Could you tell me "
        + (asks[0] if len(asks) == 1 else ", ".join(asks[:-1]) + f" and {asks[-1]}")
        + "?"
    )
    return rng, tools, picked, steps, query


def make_query(group: str, qid: int, seed: int) -> dict[str, Any]:
    """The test-instruction record of a toy query (its DFS answer's query): the ``api_list``
    a tool server and an agent read, in ToolBench's format."""
    _, tools, picked, _, query = _task(group, qid, False, seed)
    kinds = {"string": "STRING", "number": "NUMBER"}

    def param(name: str, kind: str, desc: str | None, example: Any) -> dict[str, Any]:
        return {"name": name, "type": kinds[kind], "description": desc or "", "default": example}

    api_list = [
        {
            "category_name": "Toy",
            "tool_name": tool["tool"],
            "api_name": api["api"],
            "api_description": api["desc"],
            "required_parameters": [param(*p[:4]) for p in api["params"] if p[4]],
            "optional_parameters": [param(*p[:4]) for p in api["params"] if not p[4]],
            "method": "GET",
            "template_response": {"result": "str"},
        }
        for tool in tools
        for api in tool["apis"]
    ]
    relevant = [[tool, api["api"]] for tool, api in picked]
    return {"api_list": api_list, "query": query, "relevant APIs": relevant, "query_id": qid}


def reference_steps(group: str, qid: int, seed: int) -> list[dict[str, Any]]:
    """The calls that answer a toy query of the test-instruction files (its DFS answer's
    draws), each with ``tool``, ``api``, ``args`` (JSON text), ``out`` (the tool's output) and
    ``facts``: what lets a benchmark serve the right tool outputs and check a final answer."""
    return _task(group, qid, False, seed)[3]


def make_answer(group: str, qid: int, shape: str, cot: bool, seed: int) -> dict[str, Any]:
    """One answer file's content: a toy query in ``group`` answered with the given shape."""
    rng, tools, picked, steps, query = _task(group, qid, cot, seed)
    functions = [function_schema(t["tool"], api) for t in tools for api in t["apis"]]
    functions.append(FINISH_FUNCTION)
    msgs, finish_args = build_messages(shape, steps, query, [f["name"] for f in functions], cot)
    valid = shape != "invalid"
    win = valid and f'"{GIVE_ANSWER}"' in finish_args
    generation: dict[str, Any] = {
        "valid_data": valid,
        "query_count": sum("function_call" in m for m in msgs),
        "total_tokens": len(json.dumps(msgs)) // 4,
        "final_answer": finish_args if valid else "",
        "finish_type": GIVE_ANSWER if win else GIVE_UP,
        "function": functions,
        "chain": [],
    }
    if valid:
        generation["train_messages"] = [
            msgs[: i + 1] for i, m in enumerate(msgs) if m["role"] == "assistant"
        ]
    generation["query"] = query
    method = "CoT@1" if cot else "DFS_woFilter_w2"
    answer: dict[str, Any] = {"win": win}
    if cot:
        answer |= {"try_count": 1, "trys": [{"chain": cot_chain(msgs, win), "win": win}]}
    else:
        answer["tree"] = {"size": len(msgs) - 1, "max_length": len(msgs), "tree": {}}
    answer["forward_args"] = {
        "method": method,
        "backbone_model": "toy-chat",
        "max_query_count": 50,
        "tool_root_dir": "toy_tools/",
        "query_file": f"{group}_query.json",
    }
    answer["compare_candidates"] = []
    answer["answer_generation"] = generation
    return answer


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented UTF-8 JSON with a trailing newline."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def generate(output_dir: Path, seed: int = 0, per_group: int = 6) -> list[Path]:
    """Write the toy dataset under ``output_dir`` and return the written paths.

    G1 uses ids ``1..n``; G2 reuses id 3 and then ``n+1..2n-1``; G3 uses ``2n..3n-1``; one CoT
    answer per group follows. Id 3 is a G1 test id but not a G2 one, and ``n+1`` is a G2 test id.
    """
    if per_group < 4:
        raise ValueError("per_group must be at least 4 so that every shape appears")
    n = per_group
    ids = {
        "G1": list(range(1, n + 1)),
        "G2": [3, *range(n + 1, 2 * n)],
        "G3": list(range(2 * n, 3 * n)),
    }
    written = []
    k = 0
    for group, qids in ids.items():
        for qid in qids:
            path = output_dir / "answer" / f"{group}_answer" / f"{qid}_ChatGPT_DFS_woFilter_w2.json"
            write_json(path, make_answer(group, qid, SHAPES[k % len(SHAPES)], False, seed))
            written.append(path)
            k += 1
    for offset, group in enumerate(ids):
        qid = 3 * n + offset
        shape = "timeout_give_up" if group == "G3" else "answer"
        path = output_dir / "answer" / f"{group}_answer" / f"{qid}_CoT@1.json"
        write_json(path, make_answer(group, qid, shape, True, seed))
        written.append(path)
    tests = {"G1_instruction": {"3": 0}, "G2_instruction": {str(n + 1): 0}}
    for name, test_ids in tests.items():
        path = output_dir / "test_query_ids" / f"{name}.json"
        write_json(path, test_ids)
        written.append(path)
    for group, qids in ids.items():  # the DFS answers' queries, as a tool server reads them
        path = output_dir / "test_instruction" / f"{group}_instruction.json"
        write_json(path, [make_query(group, qid, seed) for qid in qids])
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per_group", type=int, default=6, help="DFS answers per group (>= 4)")
    args = parser.parse_args(argv)
    if args.per_group < 4:
        parser.error("--per_group must be at least 4 so that every shape appears")
    paths = generate(args.output_dir, args.seed, args.per_group)
    print(f"wrote {len(paths)} files under {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
