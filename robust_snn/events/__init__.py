"""Neuromorphic event data: synthetic N-MNIST (an event-camera simulator) in tonic's file format."""
from .synthetic import SensorModel, digit_seed, encode_nmnist, simulate, to_frames
from .writer import make_nmnist

__all__ = ["SensorModel", "digit_seed", "encode_nmnist", "make_nmnist", "simulate", "to_frames"]
