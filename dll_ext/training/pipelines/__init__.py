"""The course pipelines, one module each (registered in dll_ext.training.pipeline.PIPELINES)."""
