"""The `mote-edge` command line: help, one-line errors and exit codes, synth end to end."""

import re
import subprocess
import sys

import pytest

from conftest import REPO, run_cli


def test_help_lists_every_command():
    r = run_cli("--help")
    assert r.returncode == 0
    for command in ("export", "run", "info", "verify", "synth"):
        assert command in r.stdout


def test_unknown_preset_is_a_one_line_error(tmp_path):
    r = run_cli("synth", "--preset", "gpt5", "-o", str(tmp_path / "x"))
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == ["error: unknown preset 'gpt5' (choose from tiny, qwen2.5-0.5b-e8, "
                                             "qwen2.5-1.5b-e8, qwen2.5-3b-e4)"]


def test_reference_on_missing_checkpoint_is_a_one_line_error(tmp_path):
    r = run_cli("reference", str(tmp_path / "nope"), "--prompt", "hi")
    assert r.returncode == 1
    assert r.stderr.strip() == f"error: checkpoint directory not found: {tmp_path / 'nope'}"


def test_reference_on_unreadable_image_is_a_one_line_error(tiny_ckpt, tmp_path):
    bad = tmp_path / "cat.jpg"
    bad.write_bytes(b"this is not a jpeg")
    r = run_cli("reference", str(tiny_ckpt), "--prompt", "hi", "--image", str(bad))
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot read image") and "cat.jpg" in lines[0]


def test_synth_then_reference_generation(tmp_path):
    out = tmp_path / "ckpt"
    r = run_cli("synth", "--preset", "tiny", "-o", str(out), "--seed", "3")
    assert r.returncode == 0, r.stderr
    assert "0.8M parameters" in r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors",
                                                     "preprocessor_config.json", "tokenizer.json"]
    again = run_cli("synth", "--preset", "tiny", "-o", str(out))
    assert again.returncode == 1 and "--force" in again.stderr
    image = REPO / "examples" / "images" / "shapes.png"
    r = run_cli("reference", str(out), "--prompt", "What color is the circle?", "--image", str(image),
                "--max-new-tokens", "5")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip()  # random weights: some text, deterministic for the seed
    r2 = run_cli("reference", str(out), "--prompt", "What color is the circle?", "--image", str(image),
                 "--max-new-tokens", "5")
    assert r2.stdout == r.stdout


NO_TORCH = """
import importlib, sys
sys.modules["torch"] = None  # any `import torch` now raises ImportError
import mote_edge, mote_edge.cli, mote_edge.runtime, mote_edge.config, mote_edge.schema, mote_edge.presets
import mote_edge.image, mote_edge.chat, mote_edge.tokenizer, mote_edge.quant, mote_edge._native
import pkgutil
for mod in pkgutil.walk_packages(mote_edge.quant.__path__, "mote_edge.quant."):
    importlib.import_module(mod.name)
for mod in pkgutil.walk_packages(mote_edge.runtime.__path__, "mote_edge.runtime."):
    importlib.import_module(mod.name)
print("ok")
"""


def test_runtime_and_shared_modules_never_import_torch():
    r = subprocess.run([sys.executable, "-c", NO_TORCH], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


def test_export_only_command_without_torch_says_what_to_install():
    code = ("import sys; sys.modules['torch'] = None; sys.argv = ['mote-edge', 'reference', 'x', '--prompt', 'hi']; "
            "from mote_edge.cli import main; main()")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert r.stderr.strip() == "error: this command needs torch: pip install 'mote-edge[export]'"



def _readme_synopsis() -> dict[str, set[str]]:
    """README's Commands block: command name -> the options its synopsis lines name."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = text.split("## Commands", 1)[1].split("```", 2)[1]
    synopsis: dict[str, set[str]] = {}
    command = None
    for line in block.splitlines():
        if line.startswith("mote-edge "):
            command = line.split()[1]
            synopsis[command] = set()
        if command:
            code = line.split("#", 1)[0]  # what follows '#' is a comment
            synopsis[command] |= set(re.findall(r"(?<![\w-])--?[a-z][a-z0-9-]*", code))
    return synopsis


def test_readme_synopsis_names_every_option():
    """The README's Commands block says what `--help` has: every command and every option (long or short form)."""
    import typer.main
    from mote_edge.cli import app

    commands = typer.main.get_command(app).commands
    synopsis = _readme_synopsis()
    assert set(synopsis) == set(commands)
    missing = {name: sorted(p.opts[0] for p in commands[name].params
                            if p.opts[0].startswith("-") and not set(p.opts) & synopsis[name])
               for name in synopsis}
    missing = {name: opts for name, opts in missing.items() if opts}
    assert not missing, f"README's Commands block lacks {missing}"
