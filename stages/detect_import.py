"""Stage `detect_import`: the one explicit step that unpickles a trusted checkpoint (`detection.import.source`:
an original YOLOv5 checkpoint or ultralytics weights, per `detection.import.family`; both hold code
objects, which torch's safe loader refuses) and writes its config, class names and weights as a plain
file that later stages load with weights_only=True."""

from edgecompress.detection.models import import_checkpoint
from edgecompress.detection.params import DetectionPipelineParams
from edgecompress.io import write_json
from edgecompress.stage import read_params, run_stage, stage_args


def main() -> None:
    args = stage_args(__doc__, {"metrics": "import record JSON to write (source sha256, classes)"})
    spec = read_params(args.params, DetectionPipelineParams).detection.import_
    write_json(args.metrics, import_checkpoint(spec.source, spec.out, spec.family))


if __name__ == "__main__":
    run_stage(main)
