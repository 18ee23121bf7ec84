"""A manual compatibility check of `ssvp serve` with NVIDIA's tritonclient (never run by CI).

    python -m venv /tmp/tc && /tmp/tc/bin/pip install "tritonclient[http]" numpy
    ssvp serve --backbones tiny --normal GOOD_DIR --port 8000 &
    /tmp/tc/bin/python deploy/serve/tritonclient_check.py 127.0.0.1:8000 a.png b.png

Sends the images with the binary tensor data extension (tritonclient's default) and as base64
strings in JSON, and prints what comes back.
"""
import base64
import sys

import numpy as np
import tritonclient.http as http

url, files = sys.argv[1], sys.argv[2:]
client = http.InferenceServerClient(url)
print("live", client.is_server_live(), "ready", client.is_server_ready(),
      "model ready", client.is_model_ready("ssvp"))
print("inputs", client.get_model_metadata("ssvp")["inputs"])
raw = [open(f, "rb").read() for f in files]
names = ("raw_score", "pred_score", "pred_label", "pred_boxes", "box_batch_index")
for binary in (True, False):
    elements = raw if binary else [base64.b64encode(b).decode() for b in raw]
    image = http.InferInput("image", [len(files)], "BYTES")
    image.set_data_from_numpy(np.array(elements, dtype=np.object_), binary_data=binary)
    outputs = [http.InferRequestedOutput(n, binary_data=binary) for n in names]
    result = client.infer("ssvp", [image], outputs=outputs, request_id="tc-1",
                          parameters={"threshold": 0.3})
    print("binary" if binary else "base64", {n: result.as_numpy(n).tolist() for n in names[:3]},
          "boxes", result.as_numpy("pred_boxes").shape, "id", result.get_response()["id"])
image = http.InferInput("image", [1], "BYTES")
image.set_data_from_numpy(np.array(raw[:1], dtype=np.object_))
result = client.infer("ssvp", [image], outputs=[http.InferRequestedOutput("anomaly_map")])
print("anomaly_map", result.as_numpy("anomaly_map").shape, result.as_numpy("anomaly_map").dtype)
try:
    client.infer("ssvp", [http.InferInput("pixels", [1], "BYTES")])
except Exception as e:  # the server's 400, as tritonclient reports it
    print("refused as expected:", str(e)[:120])
