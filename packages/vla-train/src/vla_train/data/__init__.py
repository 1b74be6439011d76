"""LeRobot-format datasets without a hub: a pyarrow v3.0 writer, a v3.0/v2.1 reader and a
windowed PyTorch dataset with diffusion_policy padding."""

from vla_train.data.layout import FeatureSpec
from vla_train.data.reader import ImageColumn, LeRobotFrames, read_frames, read_info, read_stats
from vla_train.data.window import LeRobotWindowDataset
from vla_train.data.writer import LeRobotWriter

__all__ = [
    "FeatureSpec",
    "ImageColumn",
    "LeRobotFrames",
    "LeRobotWindowDataset",
    "LeRobotWriter",
    "read_frames",
    "read_info",
    "read_stats",
]
