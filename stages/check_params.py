"""Stage `check_params`, the first stage of every pipeline: validate the pipeline's whole params.yaml
(unknown keys included) before DVC removes any other stage's outputs.

DVC deletes a stage's outputs before it runs the stage's command, so a bad value caught by the stage
itself has already cost its outputs (issue 16). Every stage therefore depends on this stage's output,
whose content never changes while the file is valid: a valid edit re-runs this check and nothing
else, an invalid one stops `dvc repro` / `dvc exp run` here with one line and every other output untouched.
"""

import argparse

from edgecompress.detection.params import DetectionPipelineParams
from edgecompress.io import write_json
from edgecompress.params import Params
from edgecompress.stage import log, read_params, run_stage
from edgecompress.zoo.params import FinetunePipelineParams, ZooPipelineParams

SCHEMAS = {"chain": Params, "zoo": ZooPipelineParams, "finetune": FinetunePipelineParams,
           "detection": DetectionPipelineParams}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", required=True, choices=sorted(SCHEMAS))
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("--out", required=True, help="written only when valid; its content never varies")
    args = parser.parse_args()
    read_params(args.params, SCHEMAS[args.pipeline])
    write_json(args.out, {"pipeline": args.pipeline, "params": "valid"})
    log.info("%s valid -> %s", args.params, args.out)


if __name__ == "__main__":
    run_stage(main)
