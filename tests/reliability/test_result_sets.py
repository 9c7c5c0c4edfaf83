"""Item 7: a writer killed while it writes a result set leaves the previous set whole."""

from __future__ import annotations

import signal
import textwrap
from pathlib import Path

import pytest

from bifrepro.io import staged_directory
from tests.reliability._subprocess import start

WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from bifrepro.io import atomic_write_json, staged_directory

    final = Path(sys.argv[1])
    with staged_directory(final) as stage:
        (stage / "fig1.png").write_text("new")
        atomic_write_json({"new": True}, stage / "metrics.json")
        print("half-written", flush=True)
        time.sleep(60)
        (stage / "fig3.png").write_text("new")
    """
)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_a_writer_killed_mid_set_leaves_the_old_set_whole(tmp_path: Path, sig) -> None:  # noqa: ANN001
    final = tmp_path / "results" / "toy"
    final.mkdir(parents=True)
    old = {"fig1.png": "old", "fig3.png": "old", "metrics.json": '{"old": true}'}
    for name, text in old.items():
        (final / name).write_text(text)
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    proc = start([str(script), str(final)], cwd=tmp_path)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "half-written"
        proc.send_signal(sig)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode != 0
    assert {p.name: p.read_text() for p in final.iterdir()} == old
    # The next writer clears what the dead one left and swaps its own set in whole.
    with staged_directory(final) as stage:
        (stage / "fig1.png").write_text("next")
    assert [p.name for p in final.iterdir()] == ["fig1.png"]
    assert sorted(p.name for p in final.parent.iterdir()) == ["toy"]
