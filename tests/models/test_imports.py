"""The models need neither the trainer nor the data sources (nor the datasets library)."""

import subprocess
import sys


def test_import_models_loads_no_trainer_and_no_data():
    code = (
        "import sys, seqlab.models\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'datasets'\n"
        "             or m.startswith(('seqlab.train', 'seqlab.data')))\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]", out.stdout
