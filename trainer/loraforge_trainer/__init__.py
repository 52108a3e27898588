"""loraforge's SDXL LoRA trainer: ``python -m loraforge_trainer train --spec ... --images ... --out ...``.

The command-line contract (spec fields, JSON-line events, exit codes, output files) is written
down in ``trainer/README.md``; the Rust worker agent depends on it.
"""

__version__ = "0.1.0"
