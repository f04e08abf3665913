"""electra_core stays pure PyTorch + tokenizers (DESIGN.md): distribution and registry enter in pipelines/."""

import subprocess
import sys


def test_importing_electra_core_pulls_in_no_ray_deepspeed_or_mlflow():
    code = (
        "import sys, electra_core, electra_core.masking, electra_core.tokenizer, electra_core.storage\n"
        "print(sorted(m for m in ('ray', 'deepspeed', 'mlflow', 'transformers') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
