package io.streamrank.udf;

import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.annotation.InputGroup;
import org.apache.flink.table.functions.ScalarFunction;

/**
 * Takes any arguments and answers 1 (0 when the last is NULL): a JVM stand-in for the job's
 * Python functions, so bench.features can measure the features job's JVM stages alone
 * ({@code bench.ceiling_job --through jvm-stages}). Its arguments are still computed and
 * handed over, so the windows and aggregates that feed Python run as they do in the job.
 */
public class Discard extends ScalarFunction {

    public @DataTypeHint("INT") Integer eval(@DataTypeHint(inputGroup = InputGroup.ANY) Object... args) {
        return args.length == 0 || args[args.length - 1] == null ? 0 : 1;
    }
}
