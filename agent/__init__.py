"""seg-agent: instance segmentation on edge devices, published over MQTT in Roboflow's API format."""

__version__ = "0.1.0"
