"""Interoperation with other libraries (diffusers: ``cmrt.interop.diffusers``)."""
