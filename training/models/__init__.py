"""The encoders: the offline multilingual-e5-small (:mod:`.e5_model`), the frozen teacher and the
student loaded from Hugging Face folders (:mod:`.encoders`), and the teacher's token states
memoised per text (:mod:`.teacher_states`).
"""
