"""`ray job submit --working-dir . -- python -m jobs.eval --task gsm8k --questions ...`"""

from selfee.cli import run_stage

if __name__ == "__main__":
    raise SystemExit(run_stage("eval"))
