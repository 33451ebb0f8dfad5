"""`ray job submit --working-dir . -- python -m jobs.export gguf --model DIR --quant q4_K_M`
(or `... jobs.export merged --model ADAPTER --output DIR`)"""

from selfee.cli import run_stage

if __name__ == "__main__":
    raise SystemExit(run_stage("export"))
