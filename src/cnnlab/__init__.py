"""cnnlab: classic convolutional neural networks, faithful to the papers, with every number explained."""

from cnnlab.errors import CnnlabError
from cnnlab.models import create_model, list_models, model_card
from cnnlab.analysis.summary import summary

__all__ = ["CnnlabError", "create_model", "list_models", "model_card", "summary"]
__version__ = "0.1.0"
