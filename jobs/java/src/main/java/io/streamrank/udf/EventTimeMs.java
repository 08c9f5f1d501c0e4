package io.streamrank.udf;

import java.io.IOException;
import java.util.Arrays;

import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonParser;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonToken;
import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.functions.ScalarFunction;

/**
 * The record's top-level "ts" when the record is one JSON object (as ParseInteraction and Python's
 * json read it) and "ts" is an integer that fits a BIGINT, else NULL: the
 * source's event-time column and watermark (jobs.recommend.event_time_sql). A streaming scan,
 * cheaper than JSON_VALUE (a tree and a JsonPath per call, evaluated twice per record: in the
 * source's watermark and in its event-time column). A repeated "ts" keeps its last value, as
 * ParseInteraction's j_ts does. A "ts" of another type (a string, a float) is invalid and gives
 * NULL, so such a record can never advance the watermark.
 *
 * <p>The source asks for one record's event time several times: the event-time expression names it
 * twice, and the watermark generator pushed into the source evaluates that expression as well as
 * the column does, on the same thread. A JFR profile of the job had this function at 25% of the
 * source thread. So the last payload and its answer are kept per thread, and an equal payload is
 * answered without parsing again: the result depends on the payload's bytes alone.
 */
public class EventTimeMs extends ScalarFunction {

    private static final class Last {
        byte[] payload;  // a copy: the caller's array is not ours to keep
        Long ts;
    }

    private static final ThreadLocal<Last> LAST = ThreadLocal.withInitial(Last::new);

    public @DataTypeHint("BIGINT") Long eval(byte[] payload) {
        if (payload == null) {
            return null;
        }
        Last last = LAST.get();
        if (Arrays.equals(payload, last.payload)) {
            return last.ts;
        }
        Long ts = parse(payload);
        last.payload = payload.clone();
        last.ts = ts;
        return ts;
    }

    static Long parse(byte[] payload) {
        if (!ParseInteraction.pythonUtf8(payload)) {
            return null;
        }
        Long ts = null;
        try (JsonParser p = ParseInteraction.FACTORY.createParser(payload)) {
            if (p.nextToken() != JsonToken.START_OBJECT) {
                return null;
            }
            while (p.nextToken() == JsonToken.FIELD_NAME) {
                boolean isTs = "ts".equals(p.getCurrentName());
                JsonToken value = p.nextToken();
                ParseInteraction.checkValue(p, value);
                if (isTs) {
                    ts = value == JsonToken.VALUE_NUMBER_INT
                            && (p.getNumberType() == JsonParser.NumberType.INT
                                || p.getNumberType() == JsonParser.NumberType.LONG)
                            ? p.getLongValue() : null;
                }
            }
            if (p.currentToken() != JsonToken.END_OBJECT || p.nextToken() != null) {
                return null;  // not one complete JSON object: no event time
            }
        } catch (IOException | RuntimeException e) {
            return null;
        }
        return ts;
    }
}
