"""The offline teacher on Ray Serve.

serve run serve_apps.teacher_app:app                  # defaults, HTTP on :8000
serve run serve_apps.teacher_app:build rpm=60 seed=1  # any TeacherConfig key
"""

from selfee.teacher.deployment import build, teacher_application

app = teacher_application()

__all__ = ["app", "build"]
