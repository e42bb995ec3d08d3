"""The training step, in one place (TFRS's ``compute_loss`` idea).

``RankerTrainer`` wraps the functional ranker and owns the two losses:

* interaction head: binary cross-entropy over every candidate (the rated movie is 1,
  the sampled never-rated movies 0);
* optionally (``listwise_weight`` > 0) a listwise term: softmax cross-entropy of the rated movie against the
  example's whole candidate list, on the score's logit, so the loss rewards ordering the list, not only
  telling each candidate apart from random;
* rating head: squared error on the rated movie only (negatives have no rating).

The wrapped ranker is what gets saved and exported; the trainer is only the loop.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="recsys")
class RankerTrainer(keras.Model):
    """Keras model whose train/test steps compute the two-head loss of the ranker."""

    def __init__(self, ranker: keras.Model, score_weight: float = 1.0, rating_weight: float = 0.5,
                 listwise_weight: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ranker = ranker
        self.score_weight = float(score_weight)
        self.rating_weight = float(rating_weight)
        self.listwise_weight = float(listwise_weight)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.bce_tracker = keras.metrics.Mean(name="bce")
        self.mse_tracker = keras.metrics.Mean(name="rating_mse")
        self.auc = keras.metrics.AUC(name="auc")

    @property
    def metrics(self) -> list:
        return [self.loss_tracker, self.bce_tracker, self.mse_tracker, self.auc]

    def call(self, inputs: dict[str, Any], training: bool = False) -> dict[str, Any]:
        return self.ranker(inputs, training=training)

    def compute_losses(self, outputs: dict[str, Any], labels: dict[str, Any]) -> tuple[Any, Any, Any]:
        score = tf.cast(outputs["score"], tf.float32)
        rating = tf.cast(outputs["rating"], tf.float32)
        eps = 1e-7
        p = tf.clip_by_value(score, eps, 1.0 - eps)
        y = labels["score"]
        bce = -tf.reduce_mean(y * tf.math.log(p) + (1.0 - y) * tf.math.log(1.0 - p))
        mask = labels["rating_mask"]
        mse = tf.reduce_sum(mask * tf.square(rating - labels["rating"])) / tf.maximum(tf.reduce_sum(mask), 1.0)
        loss = self.score_weight * bce + self.rating_weight * mse
        if self.listwise_weight > 0:
            logit = tf.math.log(p) - tf.math.log(1.0 - p)
            listwise = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(y / tf.reduce_sum(y, -1, keepdims=True),
                                                                              logit))
            loss += self.listwise_weight * listwise
        return loss, bce, mse

    def _update(self, outputs: dict[str, Any], labels: dict[str, Any], loss: Any, bce: Any, mse: Any) -> dict[str, Any]:
        self.loss_tracker.update_state(loss)
        self.bce_tracker.update_state(bce)
        self.mse_tracker.update_state(mse)
        self.auc.update_state(tf.reshape(labels["score"], [-1]), tf.reshape(tf.cast(outputs["score"], tf.float32), [-1]))
        return {m.name: m.result() for m in self.metrics}

    def train_step(self, data: Any) -> dict[str, Any]:
        inputs, labels = data
        with tf.GradientTape() as tape:
            outputs = self.ranker(inputs, training=True)
            loss, bce, mse = self.compute_losses(outputs, labels)
            scaled = self.optimizer.scale_loss(loss) if hasattr(self.optimizer, "scale_loss") else loss
        grads = tape.gradient(scaled, self.ranker.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.ranker.trainable_variables))
        return self._update(outputs, labels, loss, bce, mse)

    def test_step(self, data: Any) -> dict[str, Any]:
        inputs, labels = data
        outputs = self.ranker(inputs, training=False)
        loss, bce, mse = self.compute_losses(outputs, labels)
        return self._update(outputs, labels, loss, bce, mse)


class TimeBudget(keras.callbacks.Callback):
    """Stop a ``fit`` before it overruns ``seconds`` of wall clock (0 = no limit).

    Why: ``recsys train`` promises a bound (``model.train_budget_s``) that holds on a 1M-rating set on two CPU
    cores, where one pass over every example costs more than the whole bound. After each epoch it stops when
    another epoch of the same length would not fit; within an epoch it stops at the first step past the
    bound. EarlyStopping's ``restore_best_weights`` then still hands back the best validated epoch.
    """

    def __init__(self, seconds: float, clock: Any = None) -> None:
        super().__init__()
        import time

        self.seconds = float(seconds)
        self.clock = clock or time.perf_counter
        self.stopped = False
        self._start = self._epoch_start = 0.0

    def _stop(self) -> None:
        self.stopped = True
        self.model.stop_training = True

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._start = self.clock()

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._epoch_start = self.clock()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self.seconds > 0 and self.clock() - self._start > self.seconds:
            self._stop()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        now = self.clock()
        if self.seconds > 0 and (now - self._start) + (now - self._epoch_start) > self.seconds:
            self._stop()
