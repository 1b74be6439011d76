"""LeRobot-format datasets without a hub: a pyarrow (+ PyAV for video) v3.0 writer, a v3.0/v2.1
reader (PNG images and mp4 video features) and a windowed PyTorch dataset with diffusion_policy
padding."""

from typing import TYPE_CHECKING, Any

from vla_train.data.layout import FeatureSpec
from vla_train.data.reader import ImageColumn, LeRobotFrames, read_frames, read_info, read_stats
from vla_train.data.video import VideoColumn, VideoDecodeError, VideoEncoderSettings
from vla_train.data.writer import LeRobotWriter

if TYPE_CHECKING:
    from vla_train.data.window import LeRobotWindowDataset


def __getattr__(name: str) -> Any:
    # Imported on first use: it needs torch, which dataset-generation worker processes
    # (writer + reader only) would otherwise pay for at start-up.
    if name == "LeRobotWindowDataset":
        from vla_train.data.window import LeRobotWindowDataset

        return LeRobotWindowDataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "FeatureSpec",
    "ImageColumn",
    "LeRobotFrames",
    "LeRobotWindowDataset",
    "LeRobotWriter",
    "VideoColumn",
    "VideoDecodeError",
    "VideoEncoderSettings",
    "read_frames",
    "read_info",
    "read_stats",
]
