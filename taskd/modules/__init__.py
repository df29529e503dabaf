"""Task modules: the contract, the registry and the built-ins."""
