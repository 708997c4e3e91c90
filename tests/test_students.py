import pytest
import torch
from transformers import BertForSequenceClassification

from conftest import tiny_config
from kdlight.errors import KDLightError
from kdlight.models import FreshStudent, TruncatedTeacher, check_compatible, load_classifier


@pytest.fixture()
def teacher(assets):
    return load_classifier(str(assets["teacher"]), 2, require_head=True)


def test_truncated_teacher_copies_the_chosen_layers(teacher):
    student = TruncatedTeacher(num_layers=2).build(teacher, 2, ["neg", "pos"])
    assert student.config.num_hidden_layers == 2 and len(student.bert.encoder.layer) == 2
    # evenly spaced: first and last of 4 teacher layers
    for s_layer, t_index in zip(student.bert.encoder.layer, (0, 3), strict=True):
        t_layer = teacher.bert.encoder.layer[t_index]
        assert all(torch.equal(a, b) for a, b in zip(s_layer.parameters(), t_layer.parameters(), strict=True))
    assert torch.equal(student.bert.embeddings.word_embeddings.weight, teacher.bert.embeddings.word_embeddings.weight)
    assert (
        student.bert.embeddings.word_embeddings.weight.data_ptr()
        != teacher.bert.embeddings.word_embeddings.weight.data_ptr()
    )
    assert student.config.id2label == {0: "neg", 1: "pos"}
    assert all(p.requires_grad for p in student.parameters())
    assert TruncatedTeacher(2, layers=[1, 2]).keep(4) == [1, 2]
    with pytest.raises(KDLightError, match="cannot keep 5 layers of a 4-layer teacher"):
        TruncatedTeacher(5).build(teacher, 2)


def test_fresh_student_has_the_requested_sizes(teacher):
    student = FreshStudent(num_hidden_layers=1, hidden_size=16, num_attention_heads=2, intermediate_size=32).build(
        teacher, 2
    )
    assert (student.config.num_hidden_layers, student.config.hidden_size) == (1, 16)
    assert student.config.vocab_size == teacher.config.vocab_size
    with pytest.raises(KDLightError, match="divisible"):
        FreshStudent(hidden_size=30, num_attention_heads=4).build(teacher, 2)


def test_vocabulary_and_label_mismatches_are_clear(teacher):
    other_vocab = BertForSequenceClassification(tiny_config(teacher.config.vocab_size + 7))
    with pytest.raises(KDLightError, match="vocabulary mismatch: teacher has \\d+ token ids, student \\d+"):
        check_compatible(teacher, other_vocab)
    three_labels = BertForSequenceClassification(tiny_config(teacher.config.vocab_size, num_labels=3))
    with pytest.raises(KDLightError, match="label mismatch"):
        check_compatible(teacher, three_labels)


def test_teacher_loading_errors(assets, tmp_path):
    with pytest.raises(KDLightError, match="no fine-tuned classification head.*TeacherFineTuning"):
        load_classifier(str(assets["encoder"]), 2, require_head=True)
    with pytest.raises(KDLightError, match="predicts 2 label\\(s\\) but the data has 3"):
        load_classifier(str(assets["teacher"]), 3)
    (tmp_path / "broken.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(KDLightError, match="unreadable checkpoint"):
        load_classifier(str(tmp_path / "broken.ckpt"), 2)
    with pytest.raises(KDLightError, match="cannot load model"):
        load_classifier(str(tmp_path / "missing_model_dir"), 2)
    bare = load_classifier(str(assets["encoder"]), 3, ["a", "b", "c"])  # a bare encoder gets a fresh head
    assert bare.config.num_labels == 3 and bare.classifier.out_features == 3
