"""Neuromorphic event data: synthetic N-MNIST (an event-camera simulator) in tonic's file format."""
from .synthetic import SensorModel, encode_nmnist, make_nmnist, simulate

__all__ = ["SensorModel", "encode_nmnist", "make_nmnist", "simulate"]
