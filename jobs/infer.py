"""`ray job submit --working-dir . -- python -m jobs.infer --config ...`"""

from selfee.cli import run_stage

if __name__ == "__main__":
    raise SystemExit(run_stage("infer"))
