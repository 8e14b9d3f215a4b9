"""What the GPU machine lacks must not matter: without PyAV the project imports, trains and evaluates
(videos off), and writing a video says what is missing and how to turn videos off.

The suite itself runs end to end on a CPU as a README command (tests/test_readme_commands.py)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_project_imports_without_pyav():
    code = (
        "import sys; sys.modules['av'] = None\n"
        "import fibpolicy.data, fibpolicy.rollout, fibpolicy.training, fibpolicy.evaluation, envs.pusht, envs.robomimic\n"
        "import numpy as np\n"
        "from fibpolicy.data import write_mp4\n"
        "try:\n"
        "    write_mp4([np.zeros((8, 8, 3), np.uint8)], 'never_written.mp4')\n"
        "except ImportError as err:\n"
        "    print('refused:', err)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "refused:" in out.stdout and "PyAV" in out.stdout and "n_test_videos=0" in out.stdout
    assert not (ROOT / "never_written.mp4").exists()
