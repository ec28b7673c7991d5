NAME = "multibackend"
VERSION = "1.0.0"
