"""lfmc IR: a small typed graph of linear input-varying operators. Imports nothing else of lfmc."""
from .errors import LfmcError, ModelLoadError, ParseError, VerifyError, WeightsError
from .graph import LIV, LIV_CLASSES, Gate, Graph, Node, Param
from .interp import Interpreter, SequenceState
from .model import Model, load_model, save_model
from .text import parse_graph, print_graph
from .types import TensorType
from .verify import verify
from .weights import check_weights, random_weights

__all__ = ["LIV", "LIV_CLASSES", "Gate", "Graph", "Interpreter", "LfmcError", "Model", "ModelLoadError", "Node",
           "Param", "ParseError", "SequenceState", "TensorType", "VerifyError", "WeightsError", "check_weights",
           "load_model", "parse_graph", "print_graph", "random_weights", "save_model", "verify"]
