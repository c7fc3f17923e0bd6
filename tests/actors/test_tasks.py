"""Task registry and loaders: JSONL / Parquet / CSV / save_to_disk files written here, errors naming
file, row and field, each task's fields, prompt rendering through the chat template, generated
splits and the ``data`` CLI."""

from __future__ import annotations

import argparse
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import Dataset, DatasetDict

from actors.tasks import TaskOptions, get_task, load_examples, load_task_data, task_names
from actors.tasks.cli import add_data_parser
from actors.tasks.prompts import PromptStyle, prompt_ids, render_prompt, user_message
from system.config import DataConfig
from system.errors import ConfigError, DataError
from system.models.tokenizer import build_tokenizer
from system.types import Example

GSM = [{"question": "Tom has 3 apples and buys 4. How many?", "answer": "3 + 4 = 7\n#### 7"},
       {"question": "Half of 10?", "answer": "10 / 2 = 5\n#### 5"}]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_registry_names_and_unknown_task():
    assert task_names() == ["add", "aime", "code", "copy", "countdown", "gsm8k", "math", "sudoku"]
    with pytest.raises(ConfigError, match="unknown task 'gsm9k'; known tasks: add, aime, code, copy, countdown, gsm8k"):
        get_task("gsm9k")


def test_gsm8k_from_jsonl_parquet_csv_and_saved_dataset(tmp_path):
    jsonl = write_jsonl(tmp_path / "gsm.jsonl", GSM)
    parquet = tmp_path / "gsm.parquet"
    pq.write_table(pa.Table.from_pylist(GSM), parquet)
    csv_path = tmp_path / "gsm.csv"
    Dataset.from_list(GSM).to_csv(str(csv_path), index=False)
    saved = tmp_path / "saved"
    Dataset.from_list(GSM).save_to_disk(str(saved))
    for path in (jsonl, parquet, csv_path, saved):
        examples = load_examples("gsm8k", path)
        assert [e.reference["answer"] for e in examples] == ["7", "5"]
        assert examples[0].prompt == GSM[0]["question"] and examples[0].task == "gsm8k"
        assert examples[1].id == f"{path.stem}-2"  # no id field: file stem and 1-based row


def test_saved_dataset_dict_needs_one_split(tmp_path):
    both = tmp_path / "dd"
    DatasetDict({"train": Dataset.from_list(GSM), "test": Dataset.from_list(GSM)}).save_to_disk(str(both))
    with pytest.raises(DataError, match="splits \\['test', 'train'\\]; pass one split's directory"):
        load_examples("gsm8k", both)
    assert len(load_examples("gsm8k", both / "train")) == 2
    one = tmp_path / "one"
    DatasetDict({"test": Dataset.from_list(GSM)}).save_to_disk(str(one))
    assert len(load_examples("gsm8k", one)) == 2


def test_errors_name_file_row_and_field(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [GSM[0], {"question": "q"}])
    with pytest.raises(DataError, match=r"bad.jsonl: row 2, field 'answer': missing .*the row has \['question'\]"):
        load_examples("gsm8k", path)
    path = write_jsonl(tmp_path / "nohash.jsonl", [{"question": "q", "answer": "7"}])
    with pytest.raises(DataError, match=r"nohash.jsonl: row 1, field 'answer': has no '####'"):
        load_examples("gsm8k", path)
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(GSM[0]) + "\n\n{not json\n")
    with pytest.raises(DataError, match=r"broken.jsonl: row 3: not valid JSON"):  # line numbers count blank lines
        load_examples("gsm8k", path)
    path = write_jsonl(tmp_path / "list.jsonl", [[1, 2]])
    with pytest.raises(DataError, match=r"row 1: expected an object, got list"):
        load_examples("gsm8k", path)
    parquet = tmp_path / "q.parquet"
    pq.write_table(pa.Table.from_pylist([{"question": "q", "answer": None}]), parquet)
    with pytest.raises(DataError, match=r"q.parquet: row 1, field 'answer': missing"):
        load_examples("gsm8k", parquet)
    path = write_jsonl(tmp_path / "num.jsonl", [{"question": ["not", "text"], "answer": "#### 1"}])
    with pytest.raises(DataError, match=r"row 1, field 'question': must be a string, got list"):
        load_examples("gsm8k", path)


def test_empty_missing_unknown_and_duplicate(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="empty.jsonl: the dataset is empty"):
        load_examples("gsm8k", tmp_path / "empty.jsonl")
    pq.write_table(pa.Table.from_pylist([{"question": "q", "answer": "#### 1"}]).slice(0, 0), tmp_path / "e.parquet")
    with pytest.raises(DataError, match="e.parquet: the dataset is empty"):
        load_examples("gsm8k", tmp_path / "e.parquet")
    with pytest.raises(DataError, match="nowhere.jsonl not found"):
        load_examples("gsm8k", tmp_path / "nowhere.jsonl")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DataError, match="unknown data format '.txt'"):
        load_examples("gsm8k", tmp_path / "x.txt")
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match="not one written by datasets' save_to_disk"):
        load_examples("gsm8k", tmp_path / "plain")
    dup = write_jsonl(tmp_path / "dup.jsonl", [dict(GSM[0], id="a"), dict(GSM[1], id="a")])
    with pytest.raises(DataError, match="row 2: id 'a' repeats row 1"):
        load_examples("gsm8k", dup)


def test_math_and_aime_answers(tmp_path):
    rows = [{"problem": "1/2 + 1/4?", "solution": "It is $\\boxed{\\frac{3}{4}}$.", "answer": "\\frac{3}{4}",
             "unique_id": "test/algebra/1.json"},
            {"problem": "2+2?", "solution": "We get \\boxed{3} then \\boxed{4}."}]
    examples = load_examples("math", write_jsonl(tmp_path / "m.jsonl", rows))
    assert examples[0].id == "test/algebra/1.json" and examples[0].reference["answer"] == "\\frac{3}{4}"
    assert examples[1].reference == {"answer": "4", "solution": rows[1]["solution"]}  # the last box
    bad = write_jsonl(tmp_path / "nobox.jsonl", [{"problem": "p", "solution": "no box here"}])
    with pytest.raises(DataError, match=r"row 1, field 'solution': has no \\boxed"):
        load_examples("math", bad)
    aime = load_examples("aime", write_jsonl(tmp_path / "a.jsonl", [{"ID": "2024-I-1", "Problem": "p", "Answer": 204}]))
    assert (aime[0].id, aime[0].prompt, aime[0].reference["answer"]) == ("2024-I-1", "p", "204")


def test_countdown_layouts(tmp_path):
    rows = [{"nums": [44, 19, 35], "target": 98}, {"input": "30,100,93", "output": "23"}]
    a, b = load_examples("countdown", write_jsonl(tmp_path / "c.jsonl", rows))
    assert a.reference == {"numbers": [44, 19, 35], "target": 98}
    assert b.reference == {"numbers": [30, 100, 93], "target": 23}
    assert "[30, 100, 93]" in b.prompt and "Target: 23" in b.prompt
    bad = write_jsonl(tmp_path / "cb.jsonl", [{"nums": [1, "x"], "target": 3}])
    with pytest.raises(DataError, match=r"row 1, field 'nums': must be a non-empty list of integers"):
        load_examples("countdown", bad)
    bad = write_jsonl(tmp_path / "cb2.jsonl", [{"input": "1;2", "output": "3"}])
    with pytest.raises(DataError, match=r"field 'input': must be comma-separated integers"):
        load_examples("countdown", bad)
    bad = write_jsonl(tmp_path / "cb3.jsonl", [{"nums": [1, 2], "target": "three"}])
    with pytest.raises(DataError, match=r"field 'target': must be an integer, got 'three'"):
        load_examples("countdown", bad)


def test_sudoku_rows(tmp_path):
    rows = [{"Puzzle": "0041000340120034", "Solution": "3241142343122134"}]
    csv_path = tmp_path / "s.csv"
    csv_path.write_text("Puzzle,Solution\n0041000340120034,3241142343122134\n")  # d1's CSV layout
    for path in (write_jsonl(tmp_path / "s.jsonl", rows), csv_path):
        (ex,) = load_examples("sudoku", path)
        assert ex.reference == {"puzzle": "0041000340120034", "solution": "3241142343122134", "size": 4}
    dotted = write_jsonl(tmp_path / "d.jsonl", [{"puzzle": "..41...34.12..34", "solution": "3241142343122134"}])
    assert load_examples("sudoku", dotted)[0].reference["puzzle"] == "0041000340120034"
    cases = [({"puzzle": "0041", "solution": "3241"}, "field 'puzzle': has 4 cells"),
             ({"puzzle": "0041000340120035", "solution": "3241142343122134"}, "must hold only digits 0-4"),
             ({"puzzle": "0041000340120034", "solution": "3241142343122143"}, "field 'solution': '3241142343122143' is not a valid"),
             ({"puzzle": "1041000340120034", "solution": "3241142343122134"}, "disagrees with a given")]
    for k, (row, message) in enumerate(cases):
        with pytest.raises(DataError, match=message):
            load_examples("sudoku", write_jsonl(tmp_path / f"bad{k}.jsonl", [row]))


HUMANEVAL = {"task_id": "HumanEval/0", "entry_point": "add",
             "prompt": "from typing import List\n\n\ndef add(a: int, b: int) -> int:\n    \"\"\"Sum.\"\"\"\n",
             "canonical_solution": "    return a + b\n",
             "test": "METADATA = {}\n\n\ndef check(candidate):\n    x = 1\n    assert candidate(1, 2) == 3\n"
                     "    assert candidate(x, x) == 2\n    for i in range(3):\n        assert candidate(i, 0) == i\n"}


def test_code_humaneval_cases_split_top_level_asserts(tmp_path):
    (ex,) = load_examples("code", write_jsonl(tmp_path / "he.jsonl", [HUMANEVAL]))
    ref = ex.reference
    assert ex.id == "HumanEval/0" and ref["format"] == "humaneval" and ref["entry_point"] == "add"
    assert ref["prefix"] == HUMANEVAL["prompt"] and HUMANEVAL["prompt"] in ex.prompt
    assert len(ref["tests"]) == 2  # two top-level asserts; the one inside the loop stays in every case
    first, second = ref["tests"]
    assert "assert candidate(1, 2) == 3" in first and "assert candidate(x, x) == 2" not in first
    assert "assert candidate(x, x) == 2" in second and "assert candidate(1, 2) == 3" not in second
    assert all("x = 1" in t and "assert candidate(i, 0) == i" in t and t.endswith("check(add)\n") for t in ref["tests"])
    (grouped,) = load_examples("code", write_jsonl(tmp_path / "he2.jsonl", [HUMANEVAL]), TaskOptions(max_test_cases=1))
    assert len(grouped.reference["tests"]) == 1 and "== 3" in grouped.reference["tests"][0]


def test_code_mbpp_and_kodcode(tmp_path):
    mbpp = {"task_id": 11, "text": "Write a function to add two numbers.", "code": "def add(a, b): return a + b",
            "test_list": ["assert abs(add(0.5, 0.25) - 0.75) < 1e-9", "assert add(1, 2) == 3"],
            "test_setup_code": "", "challenge_test_list": []}
    (ex,) = load_examples("code", write_jsonl(tmp_path / "mbpp.jsonl", [mbpp]))
    assert ex.id == "11" and ex.reference["entry_point"] == "add"  # abs() is a builtin, add() is not
    assert ex.reference["tests"] == ["\nassert abs(add(0.5, 0.25) - 0.75) < 1e-9\n", "\nassert add(1, 2) == 3\n"]
    assert "Your code should pass these tests" in ex.prompt
    kod = {"question_id": "Kod_1", "question": "Write add(a, b).",
           "test": "import pytest\nfrom solution import add\n\ndef test_small():\n    assert add(1, 2) == 3\n\n"
                   "def test_fixture(tmp_path):\n    pass\n\nclass TestMore:\n    def test_zero(self):\n"
                   "        assert add(0, 0) == 0\n"}
    (ex,) = load_examples("code", write_jsonl(tmp_path / "kod.jsonl", [kod]))
    assert ex.id == "Kod_1" and ex.reference["entry_point"] == "add" and "from solution import add" in ex.prompt
    tests = ex.reference["tests"]
    assert len(tests) == 2 and tests[0].endswith("test_small()\n") and tests[1].endswith("TestMore().test_zero()\n")
    assert all("except ImportError" in t for t in tests)  # the pytest stand-in comes first
    with pytest.raises(DataError, match=r"field 'test': is not valid Python"):
        load_examples("code", write_jsonl(tmp_path / "k2.jsonl", [dict(kod, test="def test_x(:\n")]))
    with pytest.raises(DataError, match=r"field 'test_list': is empty"):
        load_examples("code", write_jsonl(tmp_path / "m2.jsonl", [dict(mbpp, test_list=[])]))
    with pytest.raises(DataError, match=r"not a known code format"):
        load_examples("code", write_jsonl(tmp_path / "x.jsonl", [{"question": "q"}]))
    with pytest.raises(DataError, match=r"row 1, field 'prompt': missing"):
        load_examples("code", write_jsonl(tmp_path / "y.jsonl", [mbpp]), TaskOptions(code_format="humaneval"))


def test_prompt_rendering_through_the_chat_template():
    tok = build_tokenizer()
    ex = Example("gsm8k", "g1", "What is 2+3?", {"answer": "5"})
    message = user_message(ex)
    assert message == ("\nRespond in the following format:\n<reasoning>\n...\n</reasoning>\n<answer>\n...\n"
                       "</answer>\n\n\nWhat is 2+3?")  # d1: instructions + "\n\n" + question
    text = render_prompt(tok, ex)
    assert text == "<|user|>" + message + "<|eot|><|assistant|>"
    prefilled = render_prompt(tok, ex, PromptStyle(boxed=True, prefill_reasoning=True))
    assert "\\boxed{...}" in prefilled and prefilled.endswith("<|assistant|><reasoning>\n")
    math_ex = Example("math", "m1", "Compute 1/2.", {"answer": "\\frac12"})
    assert "\\boxed{}" in user_message(math_ex) and "\\boxed{}" not in user_message(math_ex, PromptStyle(boxed=False))
    ids = prompt_ids(tok, ex, max_length=10)
    full = prompt_ids(tok, ex)
    assert ids == full[-10:] and tok.decode(full) == text  # left-truncated, as d1 does
    assert "```python" in user_message(Example("code", "c", "Write f.", {}))
    style = PromptStyle.from_config(DataConfig(prompt_boxed=False, prefill_reasoning=True))
    assert style == PromptStyle(boxed=False, prefill_reasoning=True) and not style.wants_boxed("math")


def test_puzzle_prompts_end_with_the_instance_so_left_truncation_keeps_it():
    """The sudoku and countdown prompts put the puzzle last: a prompt left-truncated to its last tokens
    (the demo's tiny model, d1's long prompts) still holds the numbers and the target, or the grid."""
    from actors.tasks.puzzles import countdown_example, sudoku_example

    tok = build_tokenizer()
    countdown = countdown_example([10, 5, 7], 15, "c1")
    assert countdown.prompt.endswith("\n\nNumbers: [10, 5, 7]\nTarget: 15")
    assert "Numbers: [10, 5, 7]\nTarget: 15<|eot|>" in tok.decode(prompt_ids(tok, countdown, max_length=36))
    sudoku = sudoku_example("1000023000000004", "1342423131242413", "s1")
    assert "1000023000000004<|eot|>" in tok.decode(prompt_ids(tok, sudoku, max_length=26))


def test_generated_task_data_and_files_round_trip(tmp_path):
    cfg = DataConfig(task="sudoku", num_train=40, num_test=10, seed=3)
    train, test = load_task_data(cfg)
    assert (len(train), len(test)) == (40, 10)
    assert not {e.reference["solution"] for e in train} & {e.reference["solution"] for e in test}
    assert load_task_data(cfg) == (train, test)
    cd_train, cd_test = load_task_data(DataConfig(task="countdown", num_train=30, num_test=30, countdown_numbers=4))
    assert all(len(e.reference["numbers"]) == 4 for e in cd_train + cd_test)
    keys = {(tuple(sorted(e.reference["numbers"])), e.reference["target"]) for e in cd_test}
    assert not any((tuple(sorted(e.reference["numbers"])), e.reference["target"]) in keys for e in cd_train)
    with pytest.raises(ConfigError, match="set data.train_path"):
        load_task_data(DataConfig(task="gsm8k"))
    path = write_jsonl(tmp_path / "g.jsonl", GSM)
    train, test = load_task_data(DataConfig(task="gsm8k", train_path=str(path)))
    assert len(train) == 2 and test == []


def run_cli(argv):
    parser = argparse.ArgumentParser(prog="stabledrl")
    add_data_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_data_generate_cli(tmp_path, capsys):
    out = tmp_path / "sud"
    assert run_cli(["data", "generate", "--task", "sudoku", "--size", "4", "--n", "200", "--n-test", "20",
                    "--out", str(out), "--seed", "1"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["n_train"] == 200 and summary["n_test"] == 20 and summary["shared_grids"] == 0
    train = load_examples("sudoku", out / "train.jsonl")
    test = load_examples("sudoku", out / "test.jsonl")
    cfg = DataConfig(task="sudoku", num_train=200, num_test=20, seed=1)
    assert (train, test) == load_task_data(cfg)  # the files hold exactly the generated examples
    assert json.loads((out / "meta.json").read_text())["blanks"] == 8
    cd = tmp_path / "cd"
    run_cli(["data", "generate", "--task", "countdown", "--n", "20", "--n-test", "5", "--out", str(cd)])
    row = json.loads((cd / "train.jsonl").read_text().splitlines()[0])
    assert set(row) == {"id", "nums", "target", "solution"}
    assert run_cli(["data", "check", "--task", "countdown", str(cd / "test.jsonl")]) == 0
    assert '"examples": 5' in capsys.readouterr().out
    with pytest.raises(ConfigError, match="sudoku_blanks \\(13\\) must be at most 12"):
        run_cli(["data", "generate", "--task", "sudoku", "--blanks", "13", "--n", "2", "--out", str(out)])
