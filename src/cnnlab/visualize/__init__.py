"""What convolutional networks learn: kernels, feature maps, top-9 image patches, saliency and Grad-CAM.

The functions here return NumPy arrays and small dataclasses (for notebooks: an :class:`Attribution` or
:class:`Kernels` shows itself as a picture); :mod:`cnnlab.visualize.plots` draws them into matplotlib Figures
(``plot_gradcam(image, att)``), and :mod:`cnnlab.visualize.figures` writes those as the PNG files of
``cnnlab visualize``. Every method hooks the model inside a context manager that removes its hooks on exit
(:func:`capture`), and gives exact results with in-place activations.
"""

from cnnlab.visualize.attribution import Attribution, gradcam, saliency
from cnnlab.visualize.features import feature_maps
from cnnlab.visualize.filters import Kernels, filters, mosaic
from cnnlab.visualize.hooks import capture, find_layer, hooks_left, layer_names
from cnnlab.visualize.layers import GRADCAM_LAYERS, feature_layers, gradcam_layer
from cnnlab.visualize.plots import plot_feature_maps, plot_filters, plot_gradcam, plot_saliency, plot_top_images
from cnnlab.visualize.top9 import TopImages, top_images

__all__ = ["GRADCAM_LAYERS", "Attribution", "Kernels", "TopImages", "capture", "feature_layers", "feature_maps",
           "filters", "find_layer", "gradcam", "gradcam_layer", "hooks_left", "layer_names", "mosaic",
           "plot_feature_maps", "plot_filters", "plot_gradcam", "plot_saliency", "plot_top_images", "saliency",
           "top_images"]
