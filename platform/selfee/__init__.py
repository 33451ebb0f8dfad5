"""SelFee on Ray: collect, augment, train, generate with revision control, serve and judge."""

import logging

__version__ = "0.1.0"

# bitsandbytes (QLoRA), imported by peft whenever it is installed, warns on CPUs with
# AVX512-BF16 that an optional kernel would have to be downloaded from the Hugging Face Hub:
# nothing here downloads at run time, and every command would print the line.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
