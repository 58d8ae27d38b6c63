"""Runner for .tflite artifacts in the legacy tflite-runtime 2.14 that many deployed boards still run.

Never import TensorFlow in this process: tflite-runtime's Interpreter then fails (vector::reserve).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import runner_common
from run_litert import TFLiteRuntime

RUNTIME = TFLiteRuntime("tflite-runtime", "tflite_runtime.interpreter", "tflite-runtime")

if __name__ == "__main__":
    sys.exit(runner_common.main(RUNTIME))
