"""The CLI's error policy over every sub-command: a bad parameter is one line on stderr and exit code 2, never a
traceback, and it is refused before any model is loaded. Plus: output into a closed pipe ends quietly."""
import subprocess
import sys

import pytest

from rscir_kit import cli
from rscir_kit.datasets.synthetic import synthetic_patterncom


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_errors")
    archive, texts, pc = synthetic_patterncom(root / "pc", images_per_class=3, rows_per_class=2)
    archive.save(root / "feats.npz")
    texts.save(root / "text.npz")
    (root / "texts.txt").write_text("with a river\n")
    (root / "images" / "c").mkdir(parents=True)
    return root


def _cases(r):
    """sub-command (as in the parser) -> argument lists, each with one bad parameter."""
    feats, text = ["--features", str(r / "feats.npz")], ["--text-features", str(r / "text.npz")]
    pc = ["evaluate", "patterncom", *feats, *text, "--patterncom-dir", str(r / "pc")]
    uc = ["evaluate", "ucmcom", *feats, *text]
    return {
        "extract": [["extract", "--images", str(r / "images"), "--out", str(r / "o.npz"), "--batch-size", "0"],
                    ["extract", "--images", str(r / "nowhere"), "--out", str(r / "o.npz")],
                    ["extract", "--images", str(r / "images"), "--out", str(r / "o.npz"), "--device", "tpu"],
                    ["extract", "--images", str(r / "images"), "--out", str(r / "o.npz"), "--precision", "fp8"]],
        "encode-text": [["encode-text", "--texts-file", str(r / "nope.txt"), "--out", str(r / "t.npz")],
                        ["encode-text", "--texts-file", str(r / "texts.txt"), "--out", str(r), "--batch-size", "-1"]],
        "evaluate": [["evaluate"], ["evaluate", "imagenet"]],
        "evaluate patterncom": [pc + ["--lambdas", "0.1,1.5"], pc + ["--methods", "foo"], pc + ["--by", "nope"],
                                pc + ["--lambdas", "x"], pc[:-1] + [str(r / "nowhere")],
                                pc + ["--methods", "image", "--out", str(r)], pc + ["--device", "tpu"]],
        "evaluate ucmcom": [uc + ["--template", "no label here"], uc + ["--methods", "weicom", "--lambdas", "2"],
                            uc + ["--queries-file", str(r / "nope.csv")]],
        "evaluate xview2": [["evaluate", "xview2", *feats, *text, "--list", str(r / "nope.csv")],
                            ["evaluate", "xview2", *feats, *text, "--list", str(r / "texts.txt"), "--methods", "x"]],
        "evaluate queries": [["evaluate", "queries", *feats, *text, "--queries", str(r / "nope.csv")],
                             ["evaluate", "queries", *feats, *text, "--queries", str(r / "texts.txt"),
                              "--on-empty", "maybe"]],
        "index": [["index"]],
        "index build": [["index", "build", "--features", str(r / "nope.npz"), "--out", str(r / "idx")],
                        ["index", "build", *feats, "--out", str(r / "idx"), "--nprobe", "0"]],
        "index info": [["index", "info", "--index", str(r / "nowhere")]],
        "search": [["search", "--index", str(r / "nowhere"), "--text", "x", "--lam", "2"],
                   ["search", "--index", str(r / "nowhere"), "--text", "x", "-k", "0"],
                   ["search", "--index", str(r / "nowhere")],
                   ["search", "--index", str(r / "nowhere"), "--text", "x", "--mode", "psychic"]],
        "notebooks": [["notebooks", "--size", "0"], ["notebooks", "--dataset", "imagenet"]],
        "ucm": [["ucm"]],
        "ucm download": [["ucm", "download", "--root", str(r / "texts.txt")]],
        "ucm check": [["ucm", "check", "--root", str(r / "nowhere"), "--bogus"]],
        "ucm queries": [["ucm", "queries", "--root", str(r / "nowhere"), "--out", str(r / "q.csv")],
                        ["ucm", "queries", "--min-count", "0", "--out", str(r / "q.csv")]],
        "ucm captions": [["ucm", "captions", "--features", str(r / "nope.npz")]],
    }


def _subcommands(parser, prefix=()):
    """Every leaf sub-command path of the parser, e.g. ('evaluate', 'patterncom')."""
    import argparse

    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out.append(" ".join((*prefix, name)))
                out.extend(_subcommands(sub, (*prefix, name)))
    return out


def test_every_subcommand_has_bad_parameter_cases(files):
    missing = set(_subcommands(cli.build_parser())) - set(_cases(files))
    assert not missing, f"add bad-parameter cases for {sorted(missing)}"


@pytest.mark.parametrize("command", sorted(_cases(__import__("pathlib").Path("/r"))))
def test_bad_parameters_give_one_line_and_exit_2(files, command, capsys, monkeypatch):
    import rscir_kit.encoders

    def no_model(*a, **k):
        raise AssertionError("a model was loaded before the parameters were checked")

    monkeypatch.setattr(rscir_kit.encoders, "load_encoder", no_model)
    for argv in _cases(files)[command]:
        try:
            code = cli.main(argv)
        except SystemExit as exc:  # argparse usage errors
            code = exc.code
        err = capsys.readouterr().err.strip()
        assert code == 2, (argv, err)
        assert len(err.splitlines()) == 1 and "Traceback" not in err, (argv, err)
        assert err.startswith("rscir-kit"), (argv, err)


@pytest.mark.slow  # a fresh interpreter importing torch through the CLI
def test_output_into_a_closed_pipe_ends_quietly(tmp_path):
    """Before: `rscir-kit index info | head -1` ended in a BrokenPipeError traceback."""
    import numpy as np

    from rscir_kit.index import ArchiveIndex

    x = np.random.default_rng(0).normal(size=(20, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    # a long feature-file note makes `index info` print far more than a pipe buffer holds
    ArchiveIndex.build(x, tmp_path / "idx", paths=[f"a/{i}.jpg" for i in range(20)], labels=["a"] * 20,
                       model="m-1", feature_meta={"note": "x" * 300_000, "model": "m-1"}, fast="none")
    proc = subprocess.run(f"{sys.executable} -m rscir_kit index info --index {tmp_path / 'idx'} | head -1",
                          shell=True, capture_output=True, text=True, timeout=300)
    assert proc.stdout.strip() == "{" and proc.stderr == "", proc.stderr
