"""`ray job submit --working-dir . -- python -m jobs.quickstart --config configs/quickstart.yaml`"""

from selfee.cli import run_stage

if __name__ == "__main__":
    raise SystemExit(run_stage("quickstart"))
