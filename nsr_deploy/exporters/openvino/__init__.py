"""The ``openvino`` target: OpenVINO IR (``model.xml`` + ``model.bin``) at fp32, bf16 and int8."""
