"""int8 for OpenVINO: NNCF on the lowered IR (dense models) and the split int8 graph (sparse models)."""
