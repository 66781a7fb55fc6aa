"""The job runner a platform's workers start for each job: reads the job from stdin, writes its
events to stdout. Run as a script (the package directory's parent is put on the path first)."""

import os
import sys

if __name__ == "__main__":
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    from soramai._native import job_runner

    args = sys.argv[1:]
    if args[:1] == ["job-runner"]:
        args = args[1:]
    sys.exit(job_runner(args))
